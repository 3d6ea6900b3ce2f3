"""The dashboard's pages: thin views over ``django_async_jobs.api``.

Every view is wrapped by the admin site's ``admin_view`` (staff only, CSRF on POST). Counts,
queues, processes and job classes need nothing more; job arguments, which may hold personal
data, need ``READ_PERMISSION``; every change needs ``MANAGE_PERMISSION``. A change is a POST
that redirects back (post/redirect/get), with the outcome in a message.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import redis
from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from django_async_jobs import api
from django_async_jobs import metrics as job_metrics
from django_async_jobs.conf import valid_queue_name
from django_async_jobs.models import DeadJob, JobProgress
from django_async_jobs.templatetags.async_jobs import (
    absolute,
    duration,
    milliseconds,
    moment_parts,
    relative,
)

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
    ("blocked", "async_jobs_blocked", gettext_lazy("Limits")),
    ("batches", "async_jobs_batches", gettext_lazy("Batches")),
    ("metrics", "async_jobs_metrics", gettext_lazy("Metrics")),
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


BULK_QUESTIONS = {  # a bulk button's confirmation (the page adds "all matching" when ticked)
    "enqueue": gettext_lazy("Run these jobs now?"),
    "cancel": gettext_lazy("Cancel these jobs? They will not run."),
    "delete": gettext_lazy("Delete these jobs?"),
    "kill": gettext_lazy("Move these jobs to the dead jobs?"),
}


def _buttons(ops: tuple[str, ...]) -> list[tuple[str, str, str | None]]:
    return [(op, str(BUTTONS[op][0]), BUTTONS[op][1] and str(BUTTONS[op][1])) for op in ops]


def _lists_buttons(ops: tuple[str, ...]) -> dict[str, Any]:
    """A job list's buttons: each row's, and the bulk ones with their own questions."""
    return {"buttons": _buttons(ops), "bulk_buttons": [(op, label, str(BULK_QUESTIONS[op])) for op, label, _q in _buttons(ops)]}


@dataclass(frozen=True)
class Cell:
    """A table cell: its text, the whole value when the text is cut (tooltip and expander), and
    a CSS class ("aj-long": truncated to the column, "aj-time": a moment)."""

    text: str
    whole: str = ""
    css: str = ""
    extra: str = ""  # a muted second part (a moment's relative time)


@dataclass(frozen=True)
class Row:
    """One job as a table row: its ref (for the checkbox and buttons), its detail page, its cells."""

    ref: str
    job_id: str
    url: str
    cells: list[Cell]


def _time_cell(value: datetime | None, now: float) -> Cell:
    text, ago, iso = moment_parts(value, now)
    return Cell(text, iso, "aj-time", ago)


def job_table(
    page_entries: list[api.JobEntry], kind: str | None, detail: Callable[[api.JobEntry], str], arguments: bool = True,
) -> tuple[list[str], list[Row]]:
    """Headers and rows for a page of jobs, built in Python: a template doing the same per cell
    costs more than the Redis reads for the page. ``arguments``: show the Arguments column;
    ``detail``: a job's detail page URL."""
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
    for job in page_entries:
        cells = [_time_cell(job.at if kind else job.enqueued_at, now), Cell(job.job_class or str(_("(unreadable payload)")))]
        if kind:
            cells.append(Cell(job.queue))
        if arguments:
            cells.append(Cell(job.arguments, job.raw, "aj-long"))
        if kind == "retries":
            cells += [Cell(str(job.retry_count)), Cell(job.error, job.error, "aj-long")]
        cells.append(Cell(job.job_id, job.job_id, "aj-id"))
        rows.append(Row(job.ref, job.job_id, detail(job), cells))
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


def _admin_url(site: AdminSite, name: str, *args: Any) -> str | None:
    """An admin page of the app's models, or None where the site does not register it."""
    try:
        return _url(site, f"{APP_LABEL}_{name}", *args)
    except NoReverseMatch:
        return None


def dead_url(site: AdminSite) -> str | None:
    return _admin_url(site, "deadjob_changelist")


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
        "current_tab": dict((key, label) for key, _name, label, _current in tabs).get(tab),
        "current_tab_url": dict((key, url) for key, url, _label, _current in tabs).get(tab),
        "dead_url": dead_url(site) if readable else None,
        "can_read": readable,
        "can_manage": can_manage(request),
        "overview_url": _url(site, "async_jobs_overview"),
        "app_url": _url(site, "app_list", APP_LABEL),
        **context,
    })


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def detail_url(site: AdminSite, where: str) -> Callable[[api.JobEntry], str]:
    """A job's detail page from a list: ``where`` names the set, the ref finds the job at once."""
    def url(job: api.JobEntry) -> str:
        return f"{_url(site, 'async_jobs_job', job.job_id)}?{urlencode({'where': where, 'ref': job.ref})}"
    return url


def _filters(request: HttpRequest, kind: str | None) -> api.Filters:
    """The search form's filters; argument text only for users who may read arguments."""
    get = request.GET
    return api.Filters(
        job_class=get.get("class", "").strip(),
        queue=get.get("queue", "").strip() if kind else "",
        error=get.get("error", "").strip() if kind == "retries" else "",
        text=get.get("q", "").strip() if can_read(request) else "",
    )


def _page(request: HttpRequest, site: AdminSite, key: str, kind: str | None, where: str) -> dict[str, Any]:
    """A page of a sorted set (or of the search in it) and its table, as template context."""
    filters = _filters(request, kind)
    per_page = _int(request.GET.get("per_page"), DEFAULT_PER_PAGE)
    if filters:
        found = api.search(key, filters, _int(request.GET.get("cursor"), 0), per_page)
        entries, page = found.entries, None
        next_query = request.GET.copy()
        next_query["cursor"] = str(found.cursor)
        search = {"next_url": f"?{next_query.urlencode()}" if found.cursor else None, "count": len(entries)}
    else:
        page = api.page_of(key, _int(request.GET.get("page"), 1), per_page)
        entries, search = page.entries, None
    headers, rows = job_table(entries, kind, detail_url(site, where), arguments=can_read(request))
    return {
        "page": page, "search": search, "filters": filters, "headers": headers, "rows": rows,
        "search_kind": kind or "queue",
    }


def _redirect_back(request: HttpRequest, fallback: str) -> HttpResponseRedirect:
    """Back to the page (and page number, and search) the form was on."""
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


def _act(request: HttpRequest, key: str, ops: tuple[str, ...], kind: str | None) -> None:
    """A POST on a list of jobs: a row's button, the checked rows, or every job matching the
    search ("all matching": ``all=1``, the filters in the query string)."""
    op, refs = _chosen(request, ops)
    everything = request.POST.get("all") == "1"
    if op is None:
        messages.warning(request, _("Choose an action."))
        return
    if not refs and not everything:
        messages.warning(request, _("Select at least one job."))
        return
    try:
        count = api.act_matching(key, op, _filters(request, kind)) if everything else api.act(key, op, refs)
    except redis.RedisError as exc:
        _redis_down(request, exc)
    else:
        messages.success(request, OP_DONE[op](count) % {"n": count})


# -- pages --------------------------------------------------------------------------------------


def _outbox_stats() -> dict[str, Any]:
    """The outbox card's numbers (none when no job uses the outbox): rows not yet relayed to
    Redis, and how long the oldest has waited."""
    state = api.outbox_state()
    if state is None:
        return {}
    age = state.age()
    return {"outbox": state.count, "outbox_age": "-" if age is None else relative(-age)}


def _redis() -> dict[str, Any] | None:
    info = api.redis_info()
    return None if info is None else {**info, "uptime_text": duration(info["uptime"])}


def _live(stats: api.Stats) -> dict[str, Any]:
    """What the overview shows and updates beside the counters."""
    return {
        "processes_label": ngettext("%(n)d process", "%(n)d processes", stats.processes) % {"n": stats.processes},
        "nobody_works": stats.processes == 0 and stats.enqueued > 0,
        "now": absolute(time.time()),
    }


def overview(request: HttpRequest, site: AdminSite) -> HttpResponse:
    outbox_url = None
    if request.user.has_perm("django_async_jobs.view_outboxjob"):  # the rows hold arguments
        outbox_url = _admin_url(site, "outboxjob_changelist")
    stats = api.stats()
    return _render(
        request, site, "overview.html", "overview", _("Dashboard"),
        stats=stats, live=_live(stats), history=api.history(), stats_url=_url(site, "async_jobs_stats"),
        outbox=_outbox_stats(), outbox_url=outbox_url, redis=_redis(),
        paused=api.paused_queues(), queues_url=_url(site, "async_jobs_queues"),
    )


def stats_json(request: HttpRequest, site: AdminSite) -> JsonResponse:
    """What the overview polls: the counters (running totals: the realtime graph is their
    differences), the 30-day history, the queues and the Redis server."""
    stats = api.stats()
    return JsonResponse({
        "stats": {**stats.as_json(), **_outbox_stats(), **_live(stats)},
        "history": api.history(),
        "queues": [q.as_json() for q in api.queues()],
        "redis": _redis(),
    })


def queues(request: HttpRequest, site: AdminSite) -> HttpResponse:
    """Every queue; one whose name breaks the rule (jobs pushed before it) is listed without
    links, since no page may open it: ``jobs clear NAME`` deletes it."""
    rows = [
        (q, duration(q.latency), _url(site, "async_jobs_queue", q.name), _url(site, "async_jobs_queue_clear", q.name),
         _url(site, "async_jobs_queue_pause", q.name))
        if valid_queue_name(q.name) else (q, duration(q.latency), None, None, None)
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


def _known_queue(name: str) -> str:
    """A queue the system knows (pushed to, paused or configured); any other name is a 404."""
    if _queue_name(name) not in api.queue_names():
        raise Http404(_("No queue is named %(name)s.") % {"name": name})
    return name


def queue(request: HttpRequest, site: AdminSite, name: str) -> HttpResponse:
    name = _known_queue(name)
    key = api.get_broker().keys.queue(name)
    here = _url(site, "async_jobs_queue", name)
    if request.method == "POST":
        _require_manage(request)
        _act(request, key, QUEUE_OPS, None)
        return _redirect_back(request, here)
    return _render(
        request, site, "queue.html", "queues", _("Queue %(name)s") % {"name": name},
        queue_name=name, **_page(request, site, key, None, f"queue:{name}"), **_lists_buttons(QUEUE_OPS),
        clear_url=_url(site, "async_jobs_queue_clear", name), queues_url=_url(site, "async_jobs_queues"),
    )


def clear_queue(request: HttpRequest, site: AdminSite, name: str) -> HttpResponse:
    name = _known_queue(name)
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
    progress = _admin_url(site, "jobprogress_changelist") if request.user.has_perm(
        "django_async_jobs.view_jobprogress") else None
    jobs = [(p, running, f'{_url(site, "async_jobs_job", running.job.job_id)}?where=running') for p in live for running in p.jobs]
    return _render(
        request, site, "busy.html", "busy", _("Busy"),
        processes=live, progress_url=progress,
        # A job fetched ahead (prefetch) waits for a thread: listed apart, not as running.
        running=[(p, r, url, duration(r.runtime)) for p, r, url in jobs if r.runtime is not None],
        waiting=[(p, r, url) for p, r, url in jobs if r.runtime is None],
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
    return HttpResponseRedirect(request.POST.get("next") if _safe_next(request) else here)


def _safe_next(request: HttpRequest) -> bool:
    """A form's ``next`` is a page of this site (the job page's actions come back to it)."""
    return url_has_allowed_host_and_scheme(
        request.POST.get("next", ""), allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )


def sorted_set(request: HttpRequest, site: AdminSite, kind: str) -> HttpResponse:
    """Scheduled jobs or retries: a page of the set in run-at order (or of a search in it),
    single, selected and "all matching" actions."""
    key = api.set_key(kind)
    here = _url(site, f"async_jobs_{kind}")
    ops = SET_OPS[kind]
    if request.method == "POST":
        _require_manage(request)
        _act(request, key, ops, kind)
        return _redirect_back(request, here)
    title = _("Scheduled jobs") if kind == "scheduled" else _("Retries")
    return _render(
        request, site, "sorted_set.html", kind, title, kind=kind, **_lists_buttons(ops), **_page(request, site, key, kind, kind)
    )


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
    """Flow control now: concurrency limits with jobs waiting for a place (and how many places
    are taken), rate limiters in use, paused queues."""
    rows = [(limit, _url(site, "async_jobs_blocked_jobs", limit.limit_id)) for limit in api.blocked_limits()]
    return _render(
        request, site, "blocked.html", "blocked", _("Limits"), rows=rows, limiters=api.rate_limiters(),
        paused=api.paused_queues(), queues_url=_url(site, "async_jobs_queues"),
    )


def blocked_jobs(request: HttpRequest, site: AdminSite, limit_id: str) -> HttpResponse:
    """One limit's blocked jobs, oldest first; delete one or a selection."""
    key = api.blocked_key(limit_id)
    if key is None:
        raise Http404
    here = _url(site, "async_jobs_blocked_jobs", limit_id)
    if request.method == "POST":
        _require_manage(request)
        _act(request, key, ("delete",), None)
        return _redirect_back(request, here)
    return _render(
        request, site, "blocked_jobs.html", "blocked", _("Blocked by %(limit)s") % {"limit": limit_id},
        limit_id=limit_id, **_page(request, site, key, None, f"blocked:{limit_id}"), **_lists_buttons(("delete",)),
        blocked_url=_url(site, "async_jobs_blocked"),
    )


# -- one job ------------------------------------------------------------------------------------


def _where_key(where: str) -> tuple[str, str | None]:
    """(kind, sorted set key) of a detail link's ``where``; key None when ``where`` names
    nothing the dashboard lists (then the job is looked for everywhere)."""
    kind, _sep, name = where.partition(":")
    if kind in api.SETS:
        return kind, api.set_key(kind)
    if kind == "queue" and valid_queue_name(name):
        return kind, api.get_broker().keys.queue(name)
    if kind == "blocked" and name:
        return kind, api.blocked_key(name)
    return kind, None


def _pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _place_context(site: AdminSite, place: api.Place) -> dict[str, Any]:
    """A place's row on the job page: what it is, when, and the forms of its actions."""
    job, now = place.job, time.time()
    actions: list[tuple[str, str, str, str | None, str]] = []  # (post URL, field, value, confirm, label)
    page, ops = "", ()  # a blocked job is deleted from its limit's page
    if place.kind in api.SETS:
        page, ops = _url(site, f"async_jobs_{place.kind}"), SET_OPS[place.kind]
    elif place.kind == "queue":
        page, ops = _url(site, "async_jobs_queue", place.queue), QUEUE_OPS
    for op, label, confirm in _buttons(ops):
        actions.append((page, f"one_{op}", job.ref, confirm, label))
    if place.kind == "running":
        actions = [(_url(site, "async_jobs_busy"), "cancel", job.job_id, str(BUTTONS["cancel"][1]), str(BUTTONS["cancel"][0]))]
    labels = {"queue": _("waiting in queue %(queue)s"), "scheduled": _("scheduled"), "retries": _("waiting for a retry"),
              "running": _("held by %(process)s"), "blocked": _("blocked by a concurrency limit")}
    state = labels[place.kind] % {"queue": place.queue, "process": place.process.process_id if place.process else ""}
    when = None
    if place.kind in api.SETS:
        when = moment_parts(job.at, now)
    elif place.kind == "queue":
        ready = api.ready_since(job, now)
        when = moment_parts(ready, now) if ready is not None else None
    runtime = None
    if place.running is not None:
        runtime = duration(place.running.runtime) if place.running.runtime is not None else _("waiting for a thread")
    return {"place": place, "state": state, "when": when, "runtime": runtime, "actions": actions}


def job_detail(request: HttpRequest, site: AdminSite, job_id: str) -> HttpResponse:
    """One job wherever it is (queued, scheduled, retrying, running, dead): its arguments,
    payload, error and traceback, retry history, progress, and its actions. From a list the
    link carries the set and the ref (one ZRANGEBYSCORE), from Busy ``where=running`` (the
    processes' jobs only); otherwise every set is searched for the id (``api.locate``)."""
    places: list[api.Place] = []
    where, ref = request.GET.get("where", ""), request.GET.get("ref", "")
    if where == "running":  # from Busy: the processes' jobs, no scan of the sets
        places = api.locate(job_id, waiting=False)
    elif where and ref:
        kind, key = _where_key(where)
        job = api.find_ref(key, ref) if key else None
        if job is not None and job.job_id == job_id:
            places = [api.Place(kind, key, job, queue=job.queue)]
    if not places:
        places = api.locate(job_id)
    readable = can_read(request)
    dead = list(DeadJob.objects.filter(job_id=job_id).order_by("-died_at")[:10]) if readable else []
    progress = []
    if request.user.has_perm("django_async_jobs.view_jobprogress"):
        progress = [(row, _admin_url(site, "jobprogress_change", row.pk)) for row in JobProgress.objects.filter(job_id=job_id)[:10]]
    if not places and not dead and not progress:
        raise Http404(_("No job %(job)s is queued, scheduled, retrying, running or dead.") % {"job": job_id})
    job = places[0].job if places else None
    data = (job.data or {}) if job else {}
    sections = []
    if job and readable:
        sections = [
            (_("Arguments"), _pretty(job.args) if job.args is not None else "-"),
            (_("Keyword arguments"), _pretty(job.kwargs)),
            (_("Context"), _pretty(data.get("context", {}))),
            (_("Meta"), _pretty(data.get("meta", {}))),
        ]
    now = time.time()
    facts, batch_url = [], None
    if job:
        facts = [
            (_("Job"), job.job_class or _("(unreadable payload)")), (_("Queue"), job.queue),
            (_("Enqueued"), "{} ({})".format(*moment_parts(job.enqueued_at, now)[:2]) if job.enqueued_at else "-"),
            (_("Priority"), str(data.get("priority", 0))),
            (_("Executions"), str(data.get("executions", 0))),
            (_("Retries"), str(job.retry_count)),
        ]
        retries = data.get("retries")
        if isinstance(retries, dict) and retries:
            facts.append((_("Retries by rule"), ", ".join(f"{k}: {v}" for k, v in retries.items())))
        if isinstance(data.get("cron"), dict):
            facts.append((_("Recurring entry"), str(data["cron"].get("name", ""))))
        if job.batch_id:
            facts.append((_("Batch"), job.batch_id))
            batch_url = f"{_url(site, 'async_jobs_batches')}?{urlencode({'bid': job.batch_id})}"
    return _render(
        request, site, "job.html", "", _("Job %(job)s") % {"job": job_id},
        job_id=job_id, job=job, places=[_place_context(site, p) for p in places],
        facts=facts, sections=sections, error=job.error if job else "",
        traceback=job.traceback if job and readable else "",
        payload=job.raw if job and readable else "",
        dead=[(row, _admin_url(site, "deadjob_change", row.pk), absolute(row.died_at)) for row in dead],
        progress=progress, here=request.get_full_path(), batch_url=batch_url,
    )


# -- batches ----------------------------------------------------------------------------------------------


def batches(request: HttpRequest, site: AdminSite) -> HttpResponse:
    """Batches newest first, a page at a time (``api.batches``: never a batch's members), with
    their progress, failures and callbacks; a manager may cancel one."""
    here = _url(site, "async_jobs_batches")
    if request.method == "POST":
        _require_manage(request)
        bid = request.POST.get("cancel", "")
        try:
            found = api.cancel_batch(bid)
        except redis.RedisError as exc:
            _redis_down(request, exc)
        else:
            if found:
                messages.success(request, _("Cancelled batch %(bid)s: its jobs are dropped when fetched; no callback fires.") % {"bid": bid})
            else:
                messages.warning(request, _("Batch %(bid)s is gone (finished and expired, or never created).") % {"bid": bid})
        return _redirect_back(request, here)
    now = time.time()
    bid = request.GET.get("bid", "")
    if bid:  # one batch (a job page's link)
        found = api.batch(bid)
        if found is None:
            raise Http404(_("No batch %(bid)s (finished and expired, or never created).") % {"bid": bid})
        return _render(request, site, "batches.html", "batches", _("Batch %(bid)s") % {"bid": bid},
                       page=None, rows=[_batch_row(found, now)])
    page = api.batches(_int(request.GET.get("page"), 1), _int(request.GET.get("per_page"), DEFAULT_PER_PAGE))
    rows = [_batch_row(batch, now) for batch in page.batches]
    # The paginator reads a Page's counts; a batch page has the same ones.
    paginator = api.Page(page.batches, page.total, page.number, page.per_page)  # type: ignore[arg-type]
    return _render(request, site, "batches.html", "batches", _("Batches"), page=paginator, rows=rows)


def _batch_row(batch: dict[str, Any], now: float) -> dict[str, Any]:
    total = batch["total"] or 0
    done = total - batch["pending"]
    state = (
        _("cancelled") if batch["cancelled"] else _("succeeded") if batch["success"]
        else _("complete, with failures") if batch["complete"] else _("running")
    )
    callbacks = [
        (event, ", ".join(info["jobs"]), moment_parts(info["fired_at"], now) if info["fired_at"] else None)
        for event, info in batch["callbacks"].items() if info["jobs"]
    ]
    return {
        "batch": batch, "state": state, "percent": round(100 * done / total) if total else 0,
        "created": moment_parts(batch["created_at"], now), "callbacks": callbacks,
    }


# -- metrics -------------------------------------------------------------------------------------


METRIC_WINDOWS = ((60, gettext_lazy("1 hour")), (360, gettext_lazy("6 hours")), (1440, gettext_lazy("24 hours")),
                  (4320, gettext_lazy("72 hours")))
CHART_POINTS = 120  # a chart's points at most: more points are summed a few to one


def metrics(request: HttpRequest, site: AdminSite) -> HttpResponse:
    """Per job class over a window of up to 72 hours (``api.metrics``: a point a minute up to 3
    hours, an hour beyond): runs, failures, execution time (average, p50, p95, p99) and queue
    latency; for one class, its charts (runs and failures, percentiles over time, the
    execution-time histogram) with the deploy marks."""
    minutes = _int(request.GET.get("minutes"), 60)
    if minutes not in dict(METRIC_WINDOWS):
        minutes = 60
    chosen = request.GET.get("class", "")
    report = api.metrics(chosen or None, minutes)
    here = _url(site, "async_jobs_metrics")
    rows = [
        {"metrics": c, "url": f"{here}?{urlencode({'class': c.job_class, 'minutes': minutes})}",
         "average": milliseconds(c.average_ms), "p50": milliseconds(c.percentile(0.5)),
         "p95": milliseconds(c.percentile(0.95)), "p99": milliseconds(c.percentile(0.99)),
         "latency": milliseconds(c.average_latency_ms)}
        for c in sorted(report.classes.values(), key=lambda c: c.job_class)
    ]
    chart = _metric_charts(report, report.classes.get(chosen)) if chosen else _metric_charts(report, None)
    a_point = chart["minutes_a_point"]
    per = _("per hour") if a_point == 60 else ngettext("per minute", "per %(n)d minutes", a_point) % {"n": a_point}
    return _render(
        request, site, "metrics.html", "metrics", _("Metrics"), rows=rows, chosen=chosen, minutes=minutes,
        windows=[(m, label, f"{here}?{urlencode({'minutes': m, **({'class': chosen} if chosen else {})})}")
                 for m, label in METRIC_WINDOWS],
        chart=chart, per=per, marks=[(absolute(m.at), m.label) for m in report.marks],
        all_url=f"{here}?minutes={minutes}",
    )


def _metric_charts(report: Any, one: Any) -> dict[str, Any]:
    """The charts' data (JSON for dashboard.js): the report's points (a minute or an hour each),
    ``size`` of them summed a point when there are more than ``CHART_POINTS``; the marks at theirs."""
    classes = [one] if one is not None else list(report.classes.values())
    count = len(report.starts)
    size = max(1, -(-count // CHART_POINTS))
    starts = report.starts[::size]
    # An hourly chart spans days: its labels carry the date.
    label_of = (lambda at: absolute(at)[5:16]) if report.step >= 3600 else (lambda at: absolute(at)[11:16])
    points = []
    for index, start in enumerate(starts):
        span = range(index * size, min((index + 1) * size, count))
        runs = sum(c.runs[i] for c in classes for i in span)
        failures = sum(c.failures[i] for c in classes for i in span)
        point = {"label": label_of(start), "processed": runs, "failed": failures}
        if one is not None:
            merged: dict[int, int] = {}
            for i in span:
                for bucket, n in one.histograms[i].items():
                    merged[bucket] = merged.get(bucket, 0) + n
            for q in (50, 95, 99):
                point[f"p{q}"] = job_metrics.percentile(merged, q / 100) or 0
        points.append(point)
    marks = [
        {"index": max(0, bisect_right(starts, int(m.at)) - 1), "label": m.label}
        for m in report.marks
    ]
    data: dict[str, Any] = {"points": points, "marks": marks, "minutes_a_point": size * report.step // 60}
    if one is not None:
        histogram = one.histogram()
        if histogram:
            low, high = min(histogram), max(histogram)
            data["histogram"] = [
                {"label": milliseconds(report.bounds_ms[min(b, len(report.bounds_ms) - 1)]), "processed": histogram.get(b, 0)}
                for b in range(low, high + 1)
            ]
    return data


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
    ("jobs/<str:job_id>/", job_detail, "async_jobs_job"),
    ("batches/", batches, "async_jobs_batches"),
    ("metrics/", metrics, "async_jobs_metrics"),
]
