"""The dashboard's pages: thin views over ``django_async_jobs.api``.

Every view is wrapped by the admin site's ``admin_view`` (staff only, CSRF on POST). Counts,
queues, processes and job classes need nothing more; job arguments, which may hold personal
data, need ``READ_PERMISSION``; every change needs ``MANAGE_PERMISSION``. A change is a POST
that redirects back (post/redirect/get), with the outcome in a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.text import Truncator
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from django_async_jobs import api
from django_async_jobs.conf import valid_queue_name

# Retrying, deleting and killing dead jobs already need this one in the DeadJob admin; the
# dashboard's changes are the same kind of power, so one permission covers both.
MANAGE_PERMISSION = "django_async_jobs.change_deadjob"
# Arguments are what dead jobs show too: whoever may read those may read the live ones.
READ_PERMISSION = "django_async_jobs.view_deadjob"
DEFAULT_PER_PAGE = 25
APP_LABEL = "django_async_jobs"
ENTRY = "AsyncJobsDashboard"  # object_name of the dashboard's row in the app list

TABS = (
    ("overview", "async_jobs_overview", gettext_lazy("Overview")),
    ("queues", "async_jobs_queues", gettext_lazy("Queues")),
    ("busy", "async_jobs_busy", gettext_lazy("Busy")),
    ("scheduled", "async_jobs_scheduled", gettext_lazy("Scheduled")),
    ("retries", "async_jobs_retries", gettext_lazy("Retries")),
    ("recurring", "async_jobs_recurring", gettext_lazy("Recurring")),
    ("blocked", "async_jobs_blocked", gettext_lazy("Blocked")),
)
QUEUE_OPS = ("cancel", "delete")
SET_OPS = {
    "scheduled": ("enqueue", "cancel", "delete"),
    "retries": ("enqueue", "cancel", "delete", "kill"),
}
OP_DONE = {
    "cancel": lambda n: ngettext("Cancelled %(n)d job.", "Cancelled %(n)d jobs.", n),
    "enqueue": lambda n: ngettext("Enqueued %(n)d job to run now.", "Enqueued %(n)d jobs to run now.", n),
    "delete": lambda n: ngettext("Deleted %(n)d job.", "Deleted %(n)d jobs.", n),
    "kill": lambda n: ngettext("Moved %(n)d job to the dead jobs.", "Moved %(n)d jobs to the dead jobs.", n),
}


BUTTONS = {  # a row's button: label, confirmation question (None: no question)
    "enqueue": (gettext_lazy("Run now"), None),
    "cancel": (gettext_lazy("Cancel"), gettext_lazy("Cancel this job? It will not run.")),
    "delete": (gettext_lazy("Delete"), gettext_lazy("Delete this job?")),
    "kill": (gettext_lazy("Kill"), gettext_lazy("Move this job to the dead jobs?")),
}


def _buttons(ops: tuple[str, ...]) -> list[tuple[str, str, str | None]]:
    return [(op, str(BUTTONS[op][0]), BUTTONS[op][1] and str(BUTTONS[op][1])) for op in ops]


@dataclass(frozen=True)
class Row:
    """One job as a table row: its ref (for the checkbox and buttons) and its cells as text."""

    ref: str
    job_id: str
    cells: list[tuple[str, str]]  # (text, title)


def _relative(seconds: float) -> str:
    """A short, translation-free age or wait ("3 min ago", "in 2 h"), cheap enough for every row."""
    size = abs(seconds)
    text = (
        f"{size:.0f} s" if size < 90 else f"{size / 60:.0f} min" if size < 5400
        else f"{size / 3600:.0f} h" if size < 129600 else f"{size / 86400:.0f} d"
    )
    return f"in {text}" if seconds > 0 else f"{text} ago"


def _moment(value: datetime | None, now: float) -> tuple[str, str]:
    if value is None:
        return "-", ""
    return f"{value:%Y-%m-%d %H:%M:%S} ({_relative(value.timestamp() - now)})", value.isoformat()


def job_table(page: api.Page, kind: str | None, arguments: bool = True) -> tuple[list[str], list[Row]]:
    """Headers and rows for a page of jobs, built in Python: a template doing the same per cell
    costs more than the Redis reads for the page. ``arguments``: show the Arguments column."""
    now = time.time()
    headers = [str(_("When")) if kind else str(_("Enqueued")), str(_("Job"))]
    if kind:
        headers.append(str(_("Queue")))
    if arguments:
        headers.append(str(_("Arguments")))
    if kind == "retries":
        headers += [str(_("Retries")), str(_("Error"))]
    headers.append(str(_("Job id")))
    rows = []
    for job in page.entries:
        cells = [_moment(job.at if kind else job.enqueued_at, now), (job.job_class or str(_("(unreadable payload)")), "")]
        if kind:
            cells.append((job.queue, ""))
        if arguments:
            cells.append((job.arguments, job.raw))
        if kind == "retries":
            cells += [(str(job.retry_count), ""), (Truncator(job.error).chars(100), job.error)]
        cells.append((job.job_id, ""))
        rows.append(Row(job.ref, job.job_id, cells))
    return headers, rows


def can_manage(request: HttpRequest) -> bool:
    return request.user.has_perm(MANAGE_PERMISSION)


def can_read(request: HttpRequest) -> bool:
    """May see job arguments (change includes view, as in the admin)."""
    return request.user.has_perm(READ_PERMISSION) or can_manage(request)


def _require_manage(request: HttpRequest) -> None:
    if not can_manage(request):
        raise PermissionDenied


def _url(site: AdminSite, name: str, *args: Any) -> str:
    return reverse(f"{site.name}:{name}", args=args, current_app=site.name)


def dead_url(site: AdminSite) -> str | None:
    try:
        return _url(site, "django_async_jobs_deadjob_changelist")
    except NoReverseMatch:
        return None


def _render(
    request: HttpRequest, site: AdminSite, template: str, tab: str, title: str, **context: Any
) -> TemplateResponse:
    request.current_app = site.name
    tabs = [(key, _url(site, name), label, key == tab) for key, name, label in TABS]
    base = site.each_context(request)
    readable = can_read(request)
    return TemplateResponse(request, f"async_jobs/dashboard/{template}", {
        **base,
        "models": our_models(base["available_apps"]),
        "title": title,
        "tabs": tabs,
        "dead_url": dead_url(site) if readable else None,
        "can_read": readable,
        "can_manage": can_manage(request),
        "overview_url": _url(site, "async_jobs_overview"),
        **context,
    })


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _page(request: HttpRequest, key: str, kind: str | None) -> dict[str, Any]:
    """A page of a sorted set and its table, as template context."""
    page = api.page_of(
        key, _int(request.GET.get("page"), 1), _int(request.GET.get("per_page"), DEFAULT_PER_PAGE)
    )
    headers, rows = job_table(page, kind, arguments=can_read(request))
    return {"page": page, "headers": headers, "rows": rows}


def _apply(key: str, op: str, refs: list[str]) -> int:
    """Act on the jobs ``refs`` name in a queue or set: cancel them (``api.cancel_refs``: marked
    and taken out, ``job_cancelled`` sent) or ``api.act``'s delete, run now and kill."""
    return api.cancel_refs(key, refs) if op == "cancel" else api.act(key, op, refs)


def _redirect_back(request: HttpRequest, fallback: str) -> HttpResponseRedirect:
    """Back to the page (and page number) the form was on."""
    query = request.GET.urlencode()
    return HttpResponseRedirect(f"{fallback}?{query}" if query else fallback)


def _redis_down(request: HttpRequest, exc: redis.RedisError) -> None:
    messages.error(request, _("Redis is unavailable: %(error)s") % {"error": exc})


def our_models(app_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The app's admin pages in an app list (dead jobs, progress, ...), for the overview's links."""
    return [
        model
        for app in app_list
        if app["app_label"] == APP_LABEL
        for model in app["models"]
        if model["object_name"] != ENTRY and model.get("admin_url")
    ]


# -- pages --------------------------------------------------------------------------------------


def _outbox_stats() -> dict[str, Any]:
    """The outbox card's numbers (none when no job uses the outbox): rows not yet relayed to
    Redis, and how long the oldest has waited."""
    state = api.outbox_state()
    if state is None:
        return {}
    age = state.age()
    return {"outbox": state.count, "outbox_age": "-" if age is None else _relative(-age)}


def overview(request: HttpRequest, site: AdminSite) -> HttpResponse:
    outbox_url = None
    if request.user.has_perm("django_async_jobs.view_outboxjob"):  # the rows hold arguments
        try:
            outbox_url = _url(site, "django_async_jobs_outboxjob_changelist")
        except NoReverseMatch:
            pass
    return _render(
        request, site, "overview.html", "overview", _("Background jobs"),
        stats=api.stats(), history=api.history(), stats_url=_url(site, "async_jobs_stats"),
        outbox=_outbox_stats(), outbox_url=outbox_url,
    )


def stats_json(request: HttpRequest, site: AdminSite) -> JsonResponse:
    """What the overview polls: the counters, the 30-day history and the live processes."""
    return JsonResponse({
        "stats": {**api.stats().as_json(), **_outbox_stats()},
        "history": api.history(),
        "queues": [q.as_json() for q in api.queues()],
    })


def queues(request: HttpRequest, site: AdminSite) -> HttpResponse:
    """Every queue; one whose name breaks the rule (jobs pushed before it) is listed without
    links, since no page may open it: ``jobs clear NAME`` deletes it."""
    rows = [
        (q, _url(site, "async_jobs_queue", q.name), _url(site, "async_jobs_queue_clear", q.name),
         _url(site, "async_jobs_queue_pause", q.name))
        if valid_queue_name(q.name) else (q, None, None, None)
        for q in api.queues()
    ]
    return _render(request, site, "queues.html", "queues", _("Queues"), rows=rows)


def pause_queue(request: HttpRequest, site: AdminSite, name: str) -> HttpResponse:
    """POST ``pause=1`` or ``pause=0``: pause or resume a queue on every worker."""
    name = _queue_name(name)
    queues_url = _url(site, "async_jobs_queues")
    if request.method != "POST":
        return HttpResponseRedirect(queues_url)
    _require_manage(request)
    pause = request.POST.get("pause") == "1"
    try:
        (api.pause_queue if pause else api.resume_queue)(name)
    except redis.RedisError as exc:
        _redis_down(request, exc)
    else:
        messages.success(request, (
            _("Paused queue %(name)s: workers stop fetching from it within a second; its jobs stay.") if pause
            else _("Resumed queue %(name)s.")
        ) % {"name": name})
    return HttpResponseRedirect(queues_url)


def _queue_name(name: str) -> str:
    """Only a valid queue name reaches a queue key (conf.validate_queue_name)."""
    if not valid_queue_name(name):
        raise Http404
    return name


def queue(request: HttpRequest, site: AdminSite, name: str) -> HttpResponse:
    name = _queue_name(name)
    broker_keys = api.get_broker().keys
    here = _url(site, "async_jobs_queue", name)
    if request.method == "POST":
        _require_manage(request)
        op, refs = _chosen(request, QUEUE_OPS)
        if op is None:
            messages.warning(request, _("Choose an action."))
            return _redirect_back(request, here)
        try:
            count = _apply(broker_keys.queue(name), op, refs)
        except redis.RedisError as exc:
            _redis_down(request, exc)
        else:
            messages.success(request, OP_DONE[op](count) % {"n": count})
        return _redirect_back(request, here)
    return _render(
        request, site, "queue.html", "queues", _("Queue %(name)s") % {"name": name},
        queue_name=name, **_page(request, broker_keys.queue(name), None), buttons=_buttons(QUEUE_OPS),
        clear_url=_url(site, "async_jobs_queue_clear", name), queues_url=_url(site, "async_jobs_queues"),
    )


def clear_queue(request: HttpRequest, site: AdminSite, name: str) -> HttpResponse:
    name = _queue_name(name)
    _require_manage(request)
    queues_url = _url(site, "async_jobs_queues")
    if request.method == "POST":
        try:
            count = api.clear_queue(name)
        except redis.RedisError as exc:
            _redis_down(request, exc)
        else:
            messages.success(request, ngettext(
                "Cleared queue %(name)s: %(n)d job deleted.", "Cleared queue %(name)s: %(n)d jobs deleted.", count,
            ) % {"name": name, "n": count})
        return HttpResponseRedirect(queues_url)
    size = api.get_broker().queue_size(name)
    return _render(
        request, site, "clear_queue.html", "queues", _("Clear queue %(name)s?") % {"name": name},
        queue_name=name, size=size, queues_url=queues_url,
    )


def busy(request: HttpRequest, site: AdminSite) -> HttpResponse:
    here = _url(site, "async_jobs_busy")
    if request.method == "POST":
        _require_manage(request)
        if "cancel" in request.POST:
            return _cancel_running(request, here)
        signal = request.POST.get("signal", "")
        process_id = request.POST.get("process", "")
        if signal not in ("quiet", "stop") or not process_id:
            messages.error(request, _("Nothing to send."))
        else:
            api.signal_process(process_id, signal)
            messages.success(request, _("Asked %(process)s to %(signal)s; it acts on its next heartbeat.") % {
                "process": process_id, "signal": signal,
            })
        return HttpResponseRedirect(here)
    live = api.processes()
    return _render(
        request, site, "busy.html", "busy", _("Busy"),
        processes=live, running=[(p, running) for p in live for running in p.jobs],
    )


def _cancel_running(request: HttpRequest, here: str) -> HttpResponse:
    """The Busy page's Cancel: ``api.cancel`` for a job a worker holds."""
    job_id = request.POST.get("cancel", "")
    try:
        found = api.cancel(job_id)
    except ValueError as exc:
        messages.error(request, str(exc))
    except redis.RedisError as exc:
        _redis_down(request, exc)
    else:
        if found.found:
            messages.success(request, _(
                "Cancelled job %(job)s: it stops at its next checkpoint, or when it checks self.cancelled "
                "(from its worker's next heartbeat)."
            ) % {"job": job_id})
        else:
            messages.warning(request, _("Job %(job)s is no longer running; it is marked cancelled in case it comes back.") % {"job": job_id})
    return HttpResponseRedirect(here)


def sorted_set(request: HttpRequest, site: AdminSite, kind: str) -> HttpResponse:
    """Scheduled jobs or retries: a page of the set in run-at order, single and bulk actions."""
    key = api.set_key(kind)
    here = _url(site, f"async_jobs_{kind}")
    ops = SET_OPS[kind]
    if request.method == "POST":
        _require_manage(request)
        op, refs = _chosen(request, ops)
        if op is None:
            messages.warning(request, _("Choose an action."))
        elif not refs:
            messages.warning(request, _("Select at least one job."))
        else:
            try:
                count = _apply(key, op, refs)
            except redis.RedisError as exc:
                _redis_down(request, exc)
            else:
                messages.success(request, OP_DONE[op](count) % {"n": count})
        return _redirect_back(request, here)
    title = _("Scheduled jobs") if kind == "scheduled" else _("Retries")
    return _render(request, site, "sorted_set.html", kind, title, kind=kind, buttons=_buttons(ops), **_page(request, key, kind))


def _chosen(request: HttpRequest, ops: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """A row's own button (``one_<op>`` = its ref) or a bulk button (``action`` + checked refs)."""
    for op in ops:
        ref = request.POST.get(f"one_{op}")
        if ref:
            return op, [ref]
    op = request.POST.get("action")
    return (op if op in ops else None), request.POST.getlist("ref")


def recurring(request: HttpRequest, site: AdminSite) -> HttpResponse:
    """The ``RECURRING`` entries: cron, time zone, next and last runs; "Run now" per entry."""
    here = _url(site, "async_jobs_recurring")
    if request.method == "POST":
        _require_manage(request)
        name = request.POST.get("entry", "")
        try:
            job_id = api.run_recurring_now(name)
        except (LookupError, RuntimeError, ImproperlyConfigured) as exc:
            messages.error(request, str(exc))
        except redis.RedisError as exc:
            _redis_down(request, exc)
        else:
            messages.success(request, _("Enqueued %(name)s now: job %(job)s.") % {"name": name, "job": job_id})
        return HttpResponseRedirect(here)
    try:
        entries, problem = api.recurring(), None
    except ImproperlyConfigured as exc:
        entries, problem = [], str(exc)
    return _render(request, site, "recurring.html", "recurring", _("Recurring jobs"), entries=entries, problem=problem)


def blocked(request: HttpRequest, site: AdminSite) -> HttpResponse:
    """Concurrency limits with jobs waiting for a place, and how many places are taken."""
    rows = [(limit, _url(site, "async_jobs_blocked_jobs", limit.limit_id)) for limit in api.blocked_limits()]
    return _render(request, site, "blocked.html", "blocked", _("Blocked jobs"), rows=rows)


def blocked_jobs(request: HttpRequest, site: AdminSite, limit_id: str) -> HttpResponse:
    """One limit's blocked jobs, oldest first; delete one or a selection."""
    key = api.blocked_key(limit_id)
    if key is None:
        raise Http404
    here = _url(site, "async_jobs_blocked_jobs", limit_id)
    if request.method == "POST":
        _require_manage(request)
        refs = _chosen(request, QUEUE_OPS)[1]
        try:
            count = api.act(key, "delete", refs)
        except redis.RedisError as exc:
            _redis_down(request, exc)
        else:
            messages.success(request, OP_DONE["delete"](count) % {"n": count})
        return _redirect_back(request, here)
    return _render(
        request, site, "blocked_jobs.html", "blocked", _("Blocked by %(limit)s") % {"limit": limit_id},
        limit_id=limit_id, **_page(request, key, None), buttons=_buttons(QUEUE_OPS),
        blocked_url=_url(site, "async_jobs_blocked"),
    )


# -- wiring -------------------------------------------------------------------------------------


def scheduled(request: HttpRequest, site: AdminSite) -> HttpResponse:
    return sorted_set(request, site, "scheduled")


def retries(request: HttpRequest, site: AdminSite) -> HttpResponse:
    return sorted_set(request, site, "retries")


# (path under the dashboard, view(request, site, **kwargs), URL name in the site's namespace)
ROUTES: list[tuple[str, Callable[..., HttpResponse], str]] = [
    ("", overview, "async_jobs_overview"),
    ("stats.json", stats_json, "async_jobs_stats"),
    ("queues/", queues, "async_jobs_queues"),
    ("queues/<str:name>/", queue, "async_jobs_queue"),
    ("queues/<str:name>/clear/", clear_queue, "async_jobs_queue_clear"),
    ("queues/<str:name>/pause/", pause_queue, "async_jobs_queue_pause"),
    ("busy/", busy, "async_jobs_busy"),
    ("scheduled/", scheduled, "async_jobs_scheduled"),
    ("retries/", retries, "async_jobs_retries"),
    ("recurring/", recurring, "async_jobs_recurring"),
    ("blocked/", blocked, "async_jobs_blocked"),
    ("blocked/<str:limit_id>/", blocked_jobs, "async_jobs_blocked_jobs"),
]
