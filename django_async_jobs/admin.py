"""The dead-jobs screen: find out why jobs died, run them again, or delete them.

Rows are evidence, so the detail page is read-only for everyone; the only writes are the
"Retry" action (change permission) and deletion (delete permission).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, Min, QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.timesince import timesince
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_async_jobs.deadjobs import retry_dead
from django_async_jobs.models import DeadJob
from django_async_jobs.templatetags.async_jobs import absolute

try:  # Django 6.1+: actions can also be offered on the detail page.
    from django.contrib.admin.options import ActionLocation

    _BOTH_PAGES: dict[str, Any] = {"location": [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM]}
except ImportError:  # pragma: no cover - older Django
    _BOTH_PAGES = {}

SKIPPED_SHOWN = 10
ERRORS_SHOWN = 5


def _pre(text: str) -> str:
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


def _pretty(value: Any) -> str:
    if value is None:
        return "-"
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
        text.encode()
    except (ValueError, RecursionError):  # too deep, or a lone surrogate: the payload shows it
        return "-"
    return _pre(text)


def _last_part(dotted: str) -> str:
    """A dotted name by its last part, the whole in the tooltip: the list keeps its columns on
    screen (the filters and the detail page show it whole)."""
    if not dotted:
        return "-"
    return format_html('<span title="{}">{}</span>', dotted, dotted.rpartition(".")[2])


def _payload(payload: str) -> str:
    try:
        text = json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
        text.encode()
    except (ValueError, RecursionError):  # not JSON, too deep, or a "\ud800" escape: as stored
        text = payload
    return _pre(text)


@admin.register(DeadJob)
class DeadJobAdmin(admin.ModelAdmin):
    # Sidekiq's dead list is when, queue, job, error: the reason carries the executions under it
    # and the error is its class and message in one column, so that at 1,400 px, beside the
    # admin's sidebar and filters, the message has room instead of a few letters a line.
    list_display = ("died", "job", "queue", "why", "error")
    list_filter = (
        "job_class",
        "queue",
        "error_class",
        "reason",
        ("died_at", admin.DateFieldListFilter),
    )
    # The payload holds the arguments as written: searching it finds a job by an argument's text.
    search_fields = ("job_class", "error_class", "error_message", "job_id", "payload")
    # No date_hierarchy: the died_at filter covers it, and the hierarchy's per-row date
    # truncation over every dead job made the list slow at 10,000 rows.
    list_per_page = 50
    show_full_result_count = False
    actions = ("retry_selected",)
    fieldsets = (
        (None, {"fields": ("job_class", "queue", "reason", "job_id", "dead_id", "executions")}),
        (_("Times"), {"fields": ("enqueued_at", "failed_at", "died_at", "created")}),
        (_("Arguments"), {"fields": ("arguments_display", "kwargs_display")}),
        (_("Error"), {"fields": ("error_class", "error_message", "traceback_display")}),
        (_("Payload"), {"fields": ("payload_display",), "classes": ("collapse",)}),
    )
    readonly_fields = (
        "job_class", "queue", "reason", "job_id", "dead_id", "executions",
        "enqueued_at", "failed_at", "died_at", "created",
        "arguments_display", "kwargs_display",
        "error_class", "error_message", "traceback_display", "payload_display",
    )

    # -- permissions: read-only rows, no adding ----------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DeadJob | None = None) -> bool:
        # Without an object this is the "may retry" check of the action; an object is never edited.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadJob]:
        queryset = super().get_queryset(request)
        match = request.resolver_match
        if match is not None and match.url_name and match.url_name.endswith("_changelist"):
            # Tracebacks and payloads can be large; the list shows none of them.
            queryset = queryset.defer("payload", "traceback", "arguments", "kwargs")
        return queryset

    # -- columns and fields ------------------------------------------------------------------

    def action_checkbox(self, obj: DeadJob) -> str:
        # The stock column renders a form widget through the template engine on every row, a
        # third of this list's render time; the markup is the same.
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME, obj.pk,
            format_html(_("Select this object for an action - {}"), str(obj)),
        )

    # Keep whatever header attributes the stock column declares (they differ across versions).
    action_checkbox.__dict__.update(admin.ModelAdmin.action_checkbox.__dict__)

    @admin.display(description=_("died at"), ordering="died_at")
    def died(self, obj: DeadJob) -> str:
        """The dashboard's one time format (``2026-12-06 04:05:09``, in ``TIME_ZONE``)."""
        return format_html(
            '<time datetime="{}" style="white-space: nowrap">{}</time>', obj.died_at.isoformat(), absolute(obj.died_at)
        )

    @admin.display(description=_("job class"), ordering="job_class")
    def job(self, obj: DeadJob) -> str:
        return _last_part(obj.job_class)

    @admin.display(description=_("reason"), ordering="reason")
    def why(self, obj: DeadJob) -> str:
        executions = ngettext("%(count)d execution", "%(count)d executions", obj.executions) % {"count": obj.executions}
        return format_html('{}<br><span class="quiet" style="white-space: nowrap">{}</span>', obj.get_reason_display(), executions)

    @admin.display(description=_("error"), ordering="error_class")
    def error(self, obj: DeadJob) -> str:
        """The error class by its last part and the message's first line, cut at 120
        characters (the whole in the tooltips; the detail page shows everything)."""
        text = obj.error_message.splitlines()[0] if obj.error_message else ""
        if not obj.error_class and not text:
            return "-"
        # A message that starts with its class's name already shows it once.
        named = bool(obj.error_class) and not text.startswith(obj.error_class.rpartition(".")[2] + ":")
        name = _last_part(obj.error_class) if named else ""
        return format_html(
            # A long URL or token breaks where it must, instead of widening the list.
            '<div style="min-width: 16em; overflow-wrap: anywhere">{}{}<span title="{}">{}</span></div>',
            name, ": " if name and text else "", Truncator(text).chars(500), Truncator(text).chars(120),
        )

    @admin.display(description=_("arguments"))
    def arguments_display(self, obj: DeadJob) -> str:
        return _pretty(obj.arguments)

    @admin.display(description=_("keyword arguments"))
    def kwargs_display(self, obj: DeadJob) -> str:
        return _pretty(obj.kwargs)

    @admin.display(description=_("traceback"))
    def traceback_display(self, obj: DeadJob) -> str:
        return _pre(obj.traceback) if obj.traceback else "-"

    @admin.display(description=_("payload"))
    def payload_display(self, obj: DeadJob) -> str:
        return _payload(obj.payload)

    # -- actions -----------------------------------------------------------------------------

    @admin.action(description=_("Retry selected dead jobs"), permissions=["change"], **_BOTH_PAGES)
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[DeadJob]) -> HttpResponseRedirect | None:
        skipped: list[str] = []
        try:
            count = retry_dead(queryset, skipped=skipped)
        except redis.RedisError as exc:
            self.message_user(
                request,
                _("Redis is unavailable (%(error)s); the dead jobs not yet retried stay here.") % {"error": exc},
                messages.ERROR,
            )
            return None
        self.message_user(
            request,
            ngettext("Retried %(count)d dead job.", "Retried %(count)d dead jobs.", count) % {"count": count},
            messages.SUCCESS,
        )
        if skipped:
            shown = ", ".join(skipped[:SKIPPED_SHOWN]) + (" …" if len(skipped) > SKIPPED_SHOWN else "")
            self.message_user(
                request,
                ngettext(
                    "%(count)d dead job has a malformed payload and cannot be retried: %(ids)s",
                    "%(count)d dead jobs have malformed payloads and cannot be retried: %(ids)s",
                    len(skipped),
                ) % {"count": len(skipped), "ids": shown},
                messages.WARNING,
            )
        match = request.resolver_match
        if match is not None and match.url_name and match.url_name.endswith("_change") and not skipped:
            # Retried from its own page: the row is gone, so go back to the list.
            opts = self.opts
            return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        return None


# The jobs dashboard (queues, busy, scheduled, retries) in this site; custom sites call install().
from django_async_jobs.dashboard import install as install_dashboard  # noqa: E402

install_dashboard(admin.site)


# -- job state: idempotency markers and progress --------------------------------------------------

from django_async_jobs.models import IdempotencyMarker, JobProgress, OutboxJob  # noqa: E402


@admin.register(IdempotencyMarker)
class IdempotencyMarkerAdmin(admin.ModelAdmin):
    """Which work is done. Deleting a marker lets that work run again; nothing else is edited."""

    list_display = ("key", "job_class", "job_id", "created", "expires_at")
    list_filter = ("job_class",)
    search_fields = ("key", "job_id")
    date_hierarchy = "created"
    readonly_fields = ("key", "job_class", "job_id", "created", "expires_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: IdempotencyMarker | None = None) -> bool:
        return False


@admin.register(JobProgress)
class JobProgressAdmin(admin.ModelAdmin):
    list_display = ("job_class", "label", "status", "progress_bar", "processed", "total", "error_count", "started_by", "updated")
    list_filter = ("status", "job_class")
    search_fields = ("job_id", "job_class", "name")
    list_select_related = ("started_by",)
    readonly_fields = (
        "job_id", "name", "job_class", "status", "progress_bar", "total", "processed", "cursor_display",
        "error_count", "errors_display", "started_by", "created", "started_at", "completed_at", "updated_at",
    )
    exclude = ("error_details", "percent", "cursor")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: JobProgress | None = None) -> bool:
        return False

    @admin.display(description=_("progress"), ordering="percent")
    def progress_bar(self, obj: JobProgress) -> str:
        return format_html(
            '<progress value="{}" max="100" style="width: 10em" title="{}%"></progress> {}%',
            obj.percent, obj.percent, f"{obj.percent:.0f}",
        )

    @admin.display(description=_("cursor"))
    def cursor_display(self, obj: JobProgress) -> str:
        return _pretty(obj.cursor)

    @admin.display(description=_("name"), ordering="name")
    def label(self, obj: JobProgress) -> str:
        """What the row tracks: its name, or the job itself (most jobs track one thing and leave
        the name empty), with the job id to tell runs of one class apart."""
        return format_html(
            '{} <span class="quiet">{}</span>', obj.name or _("(the whole job)"), Truncator(obj.job_id).chars(14)
        )

    @admin.display(description=_("updated at"), ordering="updated_at")
    def updated(self, obj: JobProgress) -> str:
        return absolute(obj.updated_at)

    @admin.display(description=_("error details"))
    def errors_display(self, obj: JobProgress) -> str:
        """The first errors one per line, the whole list (pretty JSON) behind a click: a
        thousand errors must not make the page thousands of pixels tall."""
        if not obj.error_details:
            return "-"
        details = obj.error_details if isinstance(obj.error_details, list) else [obj.error_details]
        lines = [Truncator(json.dumps(item, ensure_ascii=False)).chars(200) for item in details[:ERRORS_SHOWN]]
        more = len(details) - len(lines)
        return format_html(
            '<details><summary>{}{}</summary>{}</details>',
            "\n".join(lines), ngettext(" … and %(n)d more", " … and %(n)d more", more) % {"n": more} if more > 0 else "",
            format_html('<div style="max-height: 30em; overflow: auto">{}</div>', _pretty(obj.error_details)),
        )

    class Media:
        # While a job runs its row changes: the list and the page reload every few seconds
        # (not while the user has ticked rows or typed in a form).
        js = ["async_jobs/progress.js"]


@admin.register(OutboxJob)
class OutboxJobAdmin(admin.ModelAdmin):
    """Jobs written in a transaction and not yet relayed to Redis by a worker (transactions.md).

    Read-only: a row is a committed job, and the relay deletes it once the job is in Redis. The
    title says how many wait and how long the oldest has; a number that grows, or an age past a
    few seconds, means no worker relays (none running, or Redis or the database out of reach).
    """

    list_display = ("created", "waiting", "job_class", "queue", "priority", "run_at_display", "job_id")
    list_filter = ("queue",)
    search_fields = ("job_id",)
    ordering = ("pk",)
    list_per_page = 100
    show_full_result_count = False
    fields = ("job_id", "queue", "priority", "run_at_display", "lock", "created", "payload_display")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: OutboxJob | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: OutboxJob | None = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        found = self.get_queryset(request).aggregate(count=Count("pk"), oldest=Min("created"))
        count, oldest = found["count"], found["oldest"]
        title = ngettext("%(count)d job in the outbox", "%(count)d jobs in the outbox", count) % {"count": count}
        if oldest is not None:
            title += _(", the oldest waiting for %(age)s") % {"age": timesince(oldest)}
        return super().changelist_view(request, {"title": title, **(extra_context or {})})

    @admin.display(description=_("waiting"))
    def waiting(self, obj: OutboxJob) -> str:
        return timesince(obj.created, timezone.now())

    @admin.display(description=_("job class"))
    def job_class(self, obj: OutboxJob) -> str:
        try:
            name = json.loads(obj.payload).get("job")
        except (ValueError, AttributeError, RecursionError):
            name = None
        return name if isinstance(name, str) else "-"

    @admin.display(description=_("run at"), ordering="run_at")
    def run_at_display(self, obj: OutboxJob) -> str:
        if obj.run_at is None:
            return _("now")
        try:
            return f"{datetime.fromtimestamp(obj.run_at, UTC):%Y-%m-%d %H:%M:%S} UTC"
        except (OverflowError, OSError, ValueError):  # not a time an enqueue writes
            return str(obj.run_at)

    @admin.display(description=_("payload"))
    def payload_display(self, obj: OutboxJob) -> str:
        return _payload(obj.payload)
