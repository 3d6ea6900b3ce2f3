"""``manage.py jobs <group> <action>``: look after the job system from a shell.

Each group (``dead``; ``stats``, ``queues``, ``clear``, ``scheduled``, ``retries``, ``enqueue``;
``queue``; ``cancel``; ``cron``; ``processes``; ``metrics``) registers its own subparsers and handler functions, so a new
group is one more ``add_*`` function in ``GROUPS``; ``handle`` only dispatches.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils import timezone

from django_async_jobs import api, cron
from django_async_jobs.broker.client import get_broker
from django_async_jobs.conf import valid_queue_name, validate_queue_name
from django_async_jobs.deadjobs import flush_staged, prunable, prune, retention, retry_dead
from django_async_jobs.models import DeadJob, DeathReason

Handler = Callable[[BaseCommand, dict[str, Any]], None]


# -- output helpers -----------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as aligned columns under a header and a rule (empty cells show as '-')."""
    cells = [[("-" if value in (None, "") else str(value)) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def _short(text: str, width: int) -> str:
    text = (text or "").splitlines()[0] if text else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(value: Any) -> str:
    if value is None:
        return ""
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S") if timezone.is_aware(value) else str(value)


def confirm(options: dict[str, Any], question: str) -> None:
    """Go on after the operator types "yes" on a terminal, or with ``--yes``; else CommandError.

    Without a terminal there is nobody to ask: a script must say ``--yes``, so a piped ``yes``
    or a stray stdin can never answer for it.
    """
    if options["yes"]:
        return
    if not sys.stdin.isatty():
        raise CommandError(f"{question} No terminal to ask on: give --yes to confirm.")
    try:
        answer = input(f"{question} Type 'yes' to confirm: ")
    except EOFError:
        answer = ""
    if answer.strip().lower() != "yes":
        raise CommandError("Not confirmed; nothing done (give --yes to skip the question).")


YES_HELP = "Do not ask for confirmation (needed without a terminal)."


# -- jobs dead ... ------------------------------------------------------------------------------


def dead_list(command: BaseCommand, options: dict[str, Any]) -> None:
    rows = DeadJob.objects.all()
    if options["queue"]:
        rows = rows.filter(queue=options["queue"])
    if options["job_class"]:
        rows = rows.filter(job_class=options["job_class"])
    if options["reason"]:
        rows = rows.filter(reason=options["reason"])
    total = rows.count()
    limit = options["limit"]
    # A limit past the total takes all: a huge one would overflow the database's LIMIT.
    rows = list(rows[:limit]) if 0 < limit < total else list(rows)
    if options["json"]:
        command.stdout.write(json.dumps([_as_json(row) for row in rows], indent=2, ensure_ascii=False))
        return
    if not rows:
        command.stdout.write("No dead jobs.")
        return
    command.stdout.write(table(
        ["DEAD ID", "DIED AT", "JOB", "QUEUE", "REASON", "EXEC", "ERROR", "MESSAGE"],
        [
            [row.dead_id, _when(row.died_at), row.job_class, row.queue, row.reason, row.executions,
             row.error_class.rsplit(".", 1)[-1], _short(row.error_message, 60)]
            for row in rows
        ],
    ))
    if total > len(rows):
        command.stdout.write(f"({len(rows)} of {total} shown; --limit 0 shows all)")


def _as_json(row: DeadJob) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "dead_id": row.dead_id, "job_id": row.job_id, "job_class": row.job_class, "queue": row.queue,
        "arguments": row.arguments, "kwargs": row.kwargs, "reason": row.reason,
        "error_class": row.error_class, "error_message": row.error_message, "traceback": row.traceback,
        "executions": row.executions, "enqueued_at": iso(row.enqueued_at), "failed_at": iso(row.failed_at),
        "died_at": iso(row.died_at), "payload": row.payload,
    }


PROGRESS_HELP = "Draw the progress bar even when stderr is not a terminal."


class ProgressBar:
    """A one-line bar on stderr for long operations, redrawn in place; drawn only on a terminal
    unless asked for (``--progress``), so logs and pipes get the summary line alone."""

    WIDTH = 30

    def __init__(self, stream: Any, label: str, enabled: bool | None = None) -> None:
        self.stream = stream
        self.label = label
        self.enabled = stream.isatty() if enabled is None else enabled

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = self.WIDTH * done // total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total}", ending="\n" if done >= total else "")
        self.stream.flush()


def dead_retry(command: BaseCommand, options: dict[str, Any]) -> None:
    if options["all"] == bool(options["ids"]):
        raise CommandError("Give dead ids (or job ids) to retry, or --all.")
    missing: list[str] = []
    if options["all"]:
        rows = DeadJob.objects.all()
        total = rows.count()
        if not total:
            command.stdout.write("No dead jobs.")
            return
        confirm(options, f"Retry all {total} dead job{'s' if total != 1 else ''} (enqueue them again, remove them from the list)?")
    else:
        ids = options["ids"]
        rows = DeadJob.objects.filter(Q(dead_id__in=ids) | Q(job_id__in=ids))
        found = set(rows.values_list("dead_id", flat=True)) | set(rows.values_list("job_id", flat=True))
        missing = [i for i in ids if i not in found]
    skipped: list[str] = []
    count = retry_dead(rows, skipped=skipped, progress=ProgressBar(command.stderr, "retrying", options["progress"]))
    command.stdout.write(f"Retried {count} dead job{'s' if count != 1 else ''}.")
    if skipped:
        command.stderr.write(f"Skipped {len(skipped)} with a malformed payload: {', '.join(skipped)}")
    if missing:  # after retrying the others: a typo must not cost the rest, nor look like success
        raise CommandError(f"No dead job with id: {', '.join(missing)}")


def dead_prune(command: BaseCommand, options: dict[str, Any]) -> None:
    if options["older_than"] is not None:
        if options["older_than"] < 0:
            raise CommandError("--older-than must be zero or more days.")
        older_than: timedelta | None = timedelta(days=options["older_than"])
    else:
        older_than = retention()
        if older_than is None:
            command.stdout.write("DEAD_JOB_RETENTION is None: dead jobs are kept forever; nothing pruned.")
            return
    days = f"{older_than.total_seconds() / 86400:g} days"
    due = prunable(older_than).count()
    if due:
        confirm(options, f"Delete {due} dead job{'s' if due != 1 else ''} older than {days} for good?")
    count = prune(older_than, progress=ProgressBar(command.stderr, "pruning", options["progress"])) if due else 0
    command.stdout.write(f"Pruned {count} dead job{'s' if count != 1 else ''} older than {days}.")


def dead_flush(command: BaseCommand, options: dict[str, Any]) -> None:
    broker = get_broker()
    count = flush_staged(broker)
    command.stdout.write(f"Flushed {count} staged dead job{'s' if count != 1 else ''} to the database.")
    left = broker.staged_dead()
    if left:
        command.stderr.write(f"{left} still staged in Redis (is the database reachable? see the log).")


def add_dead(groups: Any) -> None:
    dead = groups.add_parser("dead", help="Jobs that died: list, retry, prune, flush.")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("list", help="Show dead jobs, newest first.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    p.add_argument("--limit", type=int, default=50, help="At most this many rows (0: all; default 50).")
    p.add_argument("--queue", help="Only this queue.")
    p.add_argument("--job-class", dest="job_class", help="Only this job class.")
    p.add_argument("--reason", choices=DeathReason.values, help="Only this reason.")
    p.set_defaults(handler=dead_list)

    p = actions.add_parser("retry", help="Enqueue dead jobs again and remove them from the list.")
    p.add_argument("ids", nargs="*", metavar="ID", help="Dead ids or job ids.")
    p.add_argument("--all", action="store_true", help="Retry every dead job (asks first).")
    p.add_argument("--yes", action="store_true", help=YES_HELP)
    p.add_argument("--progress", action="store_true", default=None, help=PROGRESS_HELP)
    p.set_defaults(handler=dead_retry)

    p = actions.add_parser("prune", help="Delete old dead jobs (asks first).")
    p.add_argument(
        "--older-than", dest="older_than", type=float, default=None, metavar="DAYS",
        help="Age in days (default: ASYNC_JOBS['DEAD_JOB_RETENTION'], 180 days).",
    )
    p.add_argument("--yes", action="store_true", help=YES_HELP)
    p.add_argument("--progress", action="store_true", default=None, help=PROGRESS_HELP)
    p.set_defaults(handler=dead_prune)

    p = actions.add_parser("flush", help="Write dead jobs staged in Redis to the database now.")
    p.set_defaults(handler=dead_flush)


# -- jobs stats / queues / clear / scheduled / retries / enqueue ---------------------------------
# The numbers and listings come from django_async_jobs.api, as the admin dashboard's do.


def _dump(command: BaseCommand, data: Any) -> None:
    command.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def stats_show(command: BaseCommand, options: dict[str, Any]) -> None:
    stats = api.stats()
    if options["json"]:
        _dump(command, stats.as_json())
        return
    command.stdout.write(table(["STAT", "VALUE"], [[name.replace("_", " "), value] for name, value in stats.as_json().items()]))


def queues_show(command: BaseCommand, options: dict[str, Any]) -> None:
    rows = api.queues()
    if options["json"]:
        _dump(command, [q.as_json() for q in rows])
        return
    command.stdout.write(table(
        ["QUEUE", "SIZE", "LATENCY", "STATE"],
        [[q.name, q.size, f"{q.latency:.1f}s", "paused" if q.paused else "active"] for q in rows],
    ))


def queue_clear(command: BaseCommand, options: dict[str, Any]) -> None:
    name = options["queue"]
    if not valid_queue_name(name) and name not in api.queue_names():
        # A name already in Redis (pushed before the rule) can still be cleared.
        try:
            validate_queue_name(name, "QUEUE")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    if not options["yes"]:
        size = api.get_broker().queue_size(name)
        if not size:
            command.stdout.write(f"Queue {name!r} is empty.")
            return
        confirm(options, f"Delete all {size} job{'s' if size != 1 else ''} of queue {name!r} for good?")
    count = api.clear_queue(name)
    command.stdout.write(f"Cleared queue {name!r}: {count} job{'s' if count != 1 else ''} deleted.")


def set_list(command: BaseCommand, options: dict[str, Any]) -> None:
    kind = options["group"]
    page = api.page_of(api.set_key(kind), options["page"], options["limit"])
    if options["json"]:
        _dump(command, {"total": page.total, "page": page.number, "jobs": [e.as_json() for e in page.entries]})
        return
    if not page.total:
        command.stdout.write("No scheduled jobs." if kind == "scheduled" else "No retries.")
        return
    headers = ["RUNS AT", "JOB", "QUEUE", "ARGUMENTS", "JOB ID"]
    if kind == "retries":
        headers[3:3] = ["RETRIES", "ERROR"]
    rows = []
    for e in page.entries:
        row = [f"{e.at:%Y-%m-%d %H:%M:%S}" if e.at else "", e.job_class, e.queue, _short(e.arguments, 40), e.job_id]
        if kind == "retries":
            row[3:3] = [e.retry_count, _short(e.error, 50)]
        rows.append(row)
    command.stdout.write(table(headers, rows))
    if page.total > len(page.entries):
        command.stdout.write(f"({page.start_index}-{page.end_index} of {page.total}; --page and --limit page through)")


def job_enqueue(command: BaseCommand, options: dict[str, Any]) -> None:
    try:
        args = json.loads(options["args_json"])
        kwargs = json.loads(options["kwargs"])
    except ValueError as exc:
        raise CommandError(f"Arguments must be JSON: {exc}") from exc
    if not isinstance(args, list):
        args = [args]  # one argument may be given bare: '42' or '"a"'
    if not isinstance(kwargs, dict):
        raise CommandError("--kwargs must be a JSON object.")
    try:
        job_id = api.enqueue(options["job_name"], args, kwargs)
    except (LookupError, RuntimeError, TypeError) as exc:
        raise CommandError(str(exc)) from exc
    command.stdout.write(json.dumps({"job_id": job_id}) if options["json"] else f"Enqueued {options['job_name']} {job_id}")


def add_operations(groups: Any) -> None:
    p = groups.add_parser("stats", help="Processed/failed counters, queue, scheduled, retry, dead and busy counts.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    p.set_defaults(handler=stats_show)

    p = groups.add_parser("queues", help="Every queue with its size and latency (age of its next job).")
    p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    p.set_defaults(handler=queues_show)

    p = groups.add_parser("clear", help="Delete every job of a queue (asks first).")
    p.add_argument("queue", help="The queue's name.")
    p.add_argument("--yes", action="store_true", help=YES_HELP)
    p.set_defaults(handler=queue_clear)

    for kind, text in (("scheduled", "Jobs waiting for their time"), ("retries", "Jobs waiting for a retry")):
        p = groups.add_parser(kind, help=f"{text}, soonest first.")
        p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
        p.add_argument("--limit", type=int, default=50, help="Jobs per page (default 50, at most 200).")
        p.add_argument("--page", type=int, default=1, help="Page number (default 1).")
        p.set_defaults(handler=set_list)

    p = groups.add_parser("enqueue", help="Enqueue a registered job by name.")
    p.add_argument("job_name", metavar="JOB_NAME", help="The job's registered name (jobs.py module path + class).")
    p.add_argument("args_json", metavar="ARGS_JSON", nargs="?", default="[]", help="Positional arguments as a JSON array.")
    p.add_argument("--kwargs", default="{}", help="Keyword arguments as a JSON object.")
    p.add_argument("--json", action="store_true", help="Print the job id as JSON.")
    p.set_defaults(handler=job_enqueue)


# -- jobs queue pause / resume -------------------------------------------------------------------


def queue_pause(command: BaseCommand, options: dict[str, Any]) -> None:
    name = options["queue"]
    try:
        changed = api.pause_queue(name) if options["action"] == "pause" else api.resume_queue(name)
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if options["action"] == "pause":
        command.stdout.write(
            f"Paused queue {name!r}: workers stop fetching from it within a second; its jobs stay."
            if changed else f"Queue {name!r} was paused already."
        )
    else:
        command.stdout.write(f"Resumed queue {name!r}." if changed else f"Queue {name!r} was not paused.")


def add_queue(groups: Any) -> None:
    queue = groups.add_parser("queue", help="Pause or resume a queue (every worker, on every host).")
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("pause", "Stop fetching from a queue; its jobs stay and new ones join it."),
        ("resume", "Fetch from a paused queue again."),
    ):
        p = actions.add_parser(action, help=text)
        p.add_argument("queue", help="The queue's name.")
        p.set_defaults(handler=queue_pause)


# -- jobs cancel ----------------------------------------------------------------------------------


def job_cancel(command: BaseCommand, options: dict[str, Any]) -> None:
    results = []
    for job_id in options["job_ids"]:
        try:
            results.append(api.cancel(job_id))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    if options["json"]:
        _dump(command, [found.as_json() for found in results])
    else:
        for found in results:
            if found.removed:
                command.stdout.write(f"Cancelled {found.job_id}: taken out of {', '.join(found.removed)}.")
            if found.running:
                command.stdout.write(
                    f"Cancelled {found.job_id}: held by {', '.join(found.running)}; it stops at its next "
                    f"checkpoint, or when it checks self.cancelled (from that worker's next heartbeat)."
                )
    missing = [found.job_id for found in results if not found.found]
    if missing:  # after the others: a typo must not look like success
        raise CommandError(
            f"No waiting or running job with id: {', '.join(missing)} (marked cancelled anyway, in case it comes back)."
        )


def add_cancel(groups: Any) -> None:
    p = groups.add_parser("cancel", help="Cancel jobs: waiting ones never run, running ones stop at their next checkpoint.")
    p.add_argument("job_ids", nargs="+", metavar="JOB_ID", help="Job ids.")
    p.add_argument("--json", action="store_true", help="Print JSON: where each job was found.")
    p.set_defaults(handler=job_cancel)


# -- jobs cron ------------------------------------------------------------------------------------


MAX_NEXT_RUNS = 100


def cron_list(command: BaseCommand, options: dict[str, Any]) -> None:
    rows = cron.describe(count=max(0, min(options["next"], MAX_NEXT_RUNS)))
    if options["json"]:
        _dump(command, rows)
        return
    command.stdout.write("\n".join(cron.format_table(rows)))


def add_cron(groups: Any) -> None:
    p = groups.add_parser("cron", help="Recurring jobs (ASYNC_JOBS['RECURRING']): next run times and last run.")
    p.add_argument("--next", type=int, default=3, help=f"Next run times shown per entry (default 3, at most {MAX_NEXT_RUNS}).")
    p.add_argument("--json", action="store_true", help="Print JSON instead of text.")
    p.set_defaults(handler=cron_list)


# -- jobs batches ---------------------------------------------------------------------------------


def _moment_text(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return _when(datetime.fromtimestamp(epoch, UTC))


def _batch_state(row: dict[str, Any]) -> str:
    if row["cancelled"]:
        return "cancelled"
    if row["success"]:
        return "succeeded"
    if row["complete"]:
        return "complete, dead jobs" if row["dead"] else "complete, retrying"
    return "running"


def batches_list(command: BaseCommand, options: dict[str, Any]) -> None:
    if options["bid"]:
        found = api.batch(options["bid"])
        if found is None:
            raise CommandError(f"No batch {options['bid']!r}: it expired (BATCH_RETENTION) or never existed.")
        rows = [found]
    else:
        rows = api.batches(options["page"], options["per_page"]).batches
    if options["json"]:
        _dump(command, rows if not options["bid"] else rows[0])
        return
    command.stdout.write(table(
        ["BID", "DESCRIPTION", "CREATED", "TOTAL", "PENDING", "FAILURES", "DEAD", "STATE", "CALLBACKS FIRED"],
        [
            (
                row["bid"], _short(row["description"], 30), _moment_text(row["created_at"]), row["total"],
                row["pending"], row["failures"], row["dead"], _batch_state(row),
                ",".join(event for event, cb in row["callbacks"].items() if cb["fired_at"] is not None),
            )
            for row in rows
        ],
    ))


# -- jobs processes -------------------------------------------------------------------------------


def _megabytes(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:.0f} MB"


def _ago(value: Any) -> str:
    if value is None:
        return ""
    return f"{max(0.0, (timezone.now() - value).total_seconds()):.0f}s ago"


def processes_show(command: BaseCommand, options: dict[str, Any]) -> None:
    rows = api.processes(with_jobs=False)
    if options["json"]:
        _dump(command, [{k: v for k, v in p.as_json().items() if k != "jobs"} for p in rows])
        return
    if not rows:
        command.stdout.write("No worker processes.")
        return
    command.stdout.write(table(
        ["HOST", "PID", "QUEUES", "BUSY", "RSS", "STARTED", "LAST BEAT", "QUIET", "ID"],
        [
            [p.host, p.pid, p.queues, f"{p.busy}/{p.concurrency}", _megabytes(p.rss), _when(p.started_at),
             _ago(p.last_beat), "yes" if p.quiet else "no", p.process_id]
            for p in rows
        ],
    ))


def add_batches(groups: Any) -> None:
    p = groups.add_parser("batches", help="Batches, newest first: progress, failures, callbacks fired.")
    p.add_argument("bid", nargs="?", default=None, help="One batch's id: its status only.")
    p.add_argument("--page", type=int, default=1, help="Page number (default 1).")
    p.add_argument("--per-page", type=int, default=25, help=f"Batches per page (default 25, at most {api.MAX_PER_PAGE}).")
    p.add_argument("--json", action="store_true", help="Print JSON (Batch.status for each) instead of a table.")
    p.set_defaults(handler=batches_list)


def add_processes(groups: Any) -> None:
    p = groups.add_parser("processes", help="Live worker processes: host, pid, queues, busy threads, memory, heartbeat.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    p.set_defaults(handler=processes_show)


# -- jobs metrics / jobs metrics mark ---------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def metrics_show(command: BaseCommand, options: dict[str, Any]) -> None:
    try:
        report = api.metrics(options["job_class"], options["minutes"])
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if options["json"]:
        _dump(command, report.as_json())
        return
    if not report.classes:
        command.stdout.write(f"No job ran in the last {options['minutes']} minute(s).")
    else:
        rows = []
        for name in sorted(report.classes):
            m = report.classes[name]
            other = ", ".join(f"{k}={v}" for k, v in sorted(m.other.items()))
            rows.append([
                name, m.total_runs, m.total_failures, _ms(m.average_ms), _ms(m.percentile(0.5)),
                _ms(m.percentile(0.95)), _ms(m.percentile(0.99)), _ms(m.average_latency_ms), other,
            ])
        command.stdout.write(table(["JOB", "RUNS", "FAILED", "AVG", "P50", "P95", "P99", "LATENCY", "NOT RUN"], rows))
    for found in report.marks:
        command.stdout.write(f"mark {found.label!r} at {_when(datetime.fromtimestamp(found.at, UTC))}")


def metrics_mark(command: BaseCommand, options: dict[str, Any]) -> None:
    try:
        found = api.mark_deploy(options["label"])
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    command.stdout.write(f"Marked {found.label!r} at {_when(datetime.fromtimestamp(found.at, UTC))}.")


def add_metrics(groups: Any) -> None:
    p = groups.add_parser("metrics", help="Per-class runs, failures, execution time percentiles and queue latency.")
    p.add_argument("--class", dest="job_class", help="Only this job class (its registered name).")
    p.add_argument("--minutes", type=int, default=60, help="Minutes back, the current one included (default 60).")
    p.add_argument("--json", action="store_true", help="Print JSON (per-minute series and histograms) instead of a table.")
    p.set_defaults(handler=metrics_show)
    actions = p.add_subparsers(dest="action", required=False, metavar="ACTION")
    mark = actions.add_parser("mark", help="Record a deploy mark, shown on the metrics charts.")
    mark.add_argument("label", help='The label, e.g. "v1.2".')
    mark.set_defaults(handler=metrics_mark)


# One entry per command group; each adds its parser and sets ``handler`` on its leaves.
GROUPS: list[Callable[[Any], None]] = [
    add_dead, add_operations, add_queue, add_cancel, add_cron, add_batches, add_processes, add_metrics,
]


class Command(BaseCommand):
    help = "Inspect and manage background jobs (e.g. `jobs dead list`)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
        for add in GROUPS:
            add(groups)

    def handle(self, *args: Any, **options: Any) -> None:
        handler: Handler = options["handler"]
        handler(self, options)
