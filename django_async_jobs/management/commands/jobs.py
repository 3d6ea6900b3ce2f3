"""``manage.py jobs <group> <action>``: look after the job system from a shell.

Each group (``dead`` for now) registers its own subparsers and handler functions, so a new
group (stats, queues, clear, scheduled, retries, cron, enqueue) is one more ``add_*`` function
in ``GROUPS``; ``handle`` only dispatches.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils import timezone

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
    rows = list(rows[: options["limit"]]) if options["limit"] > 0 else list(rows)
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


def dead_retry(command: BaseCommand, options: dict[str, Any]) -> None:
    from django_async_jobs.deadjobs import retry_dead

    if options["all"] == bool(options["ids"]):
        raise CommandError("Give dead ids (or job ids) to retry, or --all.")
    if options["all"]:
        rows = DeadJob.objects.all()
    else:
        ids = options["ids"]
        rows = DeadJob.objects.filter(Q(dead_id__in=ids) | Q(job_id__in=ids))
        found = set(rows.values_list("dead_id", flat=True)) | set(rows.values_list("job_id", flat=True))
        missing = [i for i in ids if i not in found]
        if missing:
            command.stderr.write(f"No dead job with id: {', '.join(missing)}")
    skipped: list[str] = []
    count = retry_dead(rows, skipped=skipped)
    command.stdout.write(f"Retried {count} dead job{'s' if count != 1 else ''}.")
    if skipped:
        command.stderr.write(f"Skipped {len(skipped)} with a malformed payload: {', '.join(skipped)}")


def dead_prune(command: BaseCommand, options: dict[str, Any]) -> None:
    from django_async_jobs.deadjobs import prune, retention

    if options["older_than"] is not None:
        if options["older_than"] < 0:
            raise CommandError("--older-than must be zero or more days.")
        older_than: timedelta | None = timedelta(days=options["older_than"])
    else:
        older_than = retention()
        if older_than is None:
            command.stdout.write("DEAD_JOB_RETENTION is None: dead jobs are kept forever; nothing pruned.")
            return
    count = prune(older_than)
    command.stdout.write(f"Pruned {count} dead job{'s' if count != 1 else ''} older than {older_than.total_seconds() / 86400:g} days.")


def dead_flush(command: BaseCommand, options: dict[str, Any]) -> None:
    from django_async_jobs.broker.client import get_broker
    from django_async_jobs.deadjobs import flush_staged

    broker = get_broker()
    count = flush_staged(broker)
    command.stdout.write(f"Flushed {count} staged dead job{'s' if count != 1 else ''} to the database.")
    left = broker.redis.hlen(broker.keys.dead)
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
    p.add_argument("--all", action="store_true", help="Retry every dead job.")
    p.set_defaults(handler=dead_retry)

    p = actions.add_parser("prune", help="Delete old dead jobs.")
    p.add_argument(
        "--older-than", dest="older_than", type=float, default=None, metavar="DAYS",
        help="Age in days (default: ASYNC_JOBS['DEAD_JOB_RETENTION'], 180 days).",
    )
    p.set_defaults(handler=dead_prune)

    p = actions.add_parser("flush", help="Write dead jobs staged in Redis to the database now.")
    p.set_defaults(handler=dead_flush)


# One entry per command group; each adds its parser and sets ``handler`` on its leaves.
GROUPS: list[Callable[[Any], None]] = [add_dead]


class Command(BaseCommand):
    help = "Inspect and manage background jobs (e.g. `jobs dead list`)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
        for add in GROUPS:
            add(groups)

    def handle(self, *args: Any, **options: Any) -> None:
        handler: Handler = options["handler"]
        handler(self, options)
