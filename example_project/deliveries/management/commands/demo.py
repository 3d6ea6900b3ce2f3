"""``manage.py demo``: sample data, every job of the project in the situations the guide covers
(a retry that succeeds, a discard, a death, a resumable CSV import with progress, a unique job
enqueued twice, the recurring jobs run now, a burst of carrier calls kept under the carrier's
rate limit), and with ``--wait`` a summary of what the worker did, which fails unless every
scenario ended as expected. ``example_project/demo.sh`` runs it next to a
worker and the fake carrier."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from deliveries import jobs
from deliveries.fake_carrier import CarrierControl
from deliveries.models import ErrorReport, Import, JobRun, OutboxMessage, Payment, Recipient, Task
from django_async_jobs import ApplicationJob, api
from django_async_jobs.broker.client import get_broker
from django_async_jobs.conf import get_settings
from django_async_jobs.models import DeadJob, JobProgress
from django_async_jobs.progress import perform_later_with_progress

RECIPIENTS = [
    ("Ana Lima", "+15550100001", "ana@example.com"),
    ("Ben Okafor", "+15550100002", ""),
    ("Chloe Martin", "", "chloe@example.com"),
]
TASKS = [(f"DEMO-{n:04d}", who) for n, who in enumerate([0, 0, 1, 2, 1, 0, 1, 2, 0, 1, 2], start=1)]
REMINDER_DELAY = timedelta(seconds=3)
IMPORT_ROWS = 500
IMPORT_BAD_LINES = {23: "no tracking number", 57: "bad email", 101: "no name", 350: "bad email", 488: "no name"}
IMPORT_NAMES = ["Dana Roe", "Eli Park", "Femi Ade", "Gus Lee", "Hana Sato"]
BURST = 3  # syncs of every task at once: more calls than the carrier takes in a second

# What a scenario should end as.
SUCCEEDED = "succeeded"
RETRIED = "retried"  # at least one retry, then success
DISCARDED = "discarded"
DEAD = "dead"
REFUSED = "refused"  # not enqueued (a unique job's lock)
REENQUEUED = "re-enqueued"  # succeeded after enqueueing a copy of itself, which succeeded too


def import_csv() -> str:
    """The demo's CSV file: ``IMPORT_ROWS`` tasks, the lines in ``IMPORT_BAD_LINES`` broken."""
    lines = ["tracking_number,name,phone,email"]
    for line in range(2, IMPORT_ROWS + 2):
        who = line % len(IMPORT_NAMES)
        number, name = f"IMP-{line - 1:04d}", IMPORT_NAMES[who]
        phone, email = f"+155502000{who}", f"{name.split()[0].lower()}@example.com"
        flaw = IMPORT_BAD_LINES.get(line)
        number = "" if flaw == "no tracking number" else number
        name = "" if flaw == "no name" else name
        email = "not-an-email" if flaw == "bad email" else email
        lines.append(f"{number},{name},{phone},{email}")
    return "\n".join(lines) + "\n"


@dataclass
class Scenario:
    label: str
    job_class: str
    queue: str
    expect: str
    job_id: str | None  # None: not enqueued
    enqueued_at: float
    # A job that enqueues a copy of itself (ManualRetryJob): the copy's runs count as its own.
    follow_copies: bool = False
    # Jobs enqueued together with this one (a burst): the scenario ends when they all have.
    together: list[str] = field(default_factory=list)


@dataclass
class Observed:
    state: str  # waiting, running, retrying, succeeded, discarded, dying, dead, refused, failed
    runs: list[JobRun] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.state in (SUCCEEDED, DISCARDED, DEAD, REFUSED)

    @property
    def retries(self) -> int:
        return sum(r.outcome == JobRun.Outcome.RETRIED for r in self.runs)

    def matches(self, expect: str) -> bool:
        if expect == RETRIED:
            return self.state == SUCCEEDED and self.retries > 0
        if expect == REENQUEUED:
            return self.state == SUCCEEDED and len({r.job_id for r in self.runs}) > 1
        return self.state == expect


class Command(BaseCommand):
    help = "Create sample data, run every job of the project in the guide's situations, optionally wait and summarise."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--wait", type=float, default=0, metavar="SECONDS",
            help="Wait up to SECONDS for a worker to settle every job, print a summary, and fail "
            "unless every scenario ended as expected (default: enqueue and return).",
        )
        parser.add_argument("--no-admin", action="store_true", help="Do not create the admin user.")

    def handle(self, *args: Any, **options: Any) -> None:
        async_settings = get_settings()
        try:
            get_broker().redis.ping()
        except Exception as exc:
            raise CommandError(f"Redis at {async_settings.redis_url} does not answer: {exc}") from exc
        control = CarrierControl(settings.CARRIER_API["URL"])
        if not control.healthy():
            raise CommandError(
                f"No carrier answers at {control.url}: start the fake one (python -m deliveries.fake_carrier "
                f"--port PORT) and set CARRIER_API_URL, or run `make demo`."
            )
        control.reset()
        admin = None if options["no_admin"] else self.ensure_admin()
        started = time.time()
        data = self.sample_data()
        scenarios = self.enqueue(control, admin, *data)
        enqueued = sum(s.job_id is not None for s in scenarios)
        self.stdout.write(
            f"Enqueued {enqueued} jobs in {len(scenarios)} scenarios on Redis {async_settings.redis_url} "
            f"(KEY_PREFIX {async_settings.key_prefix!r}); carrier at {control.url}."
        )
        if options["wait"] <= 0:
            return
        trail = self.wait(scenarios, data[3], options["wait"])
        ok = self.summary(scenarios, data[3], trail, control, started)
        if not ok:
            raise CommandError(
                f"Not every scenario ended as expected within {options['wait']:.0f}s: is a worker running "
                f"(python manage.py runworker) on the same Redis and KEY_PREFIX?"
            )

    # -- set-up ----------------------------------------------------------------------------------

    def ensure_admin(self) -> Any:
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username="admin", defaults={"email": "admin@example.com"})
        user.is_staff = user.is_superuser = True
        user.set_password("admin")
        user.save()
        self.stdout.write("Admin user: admin / admin")
        return user

    def sample_data(self) -> tuple[list[Recipient], list[Task], list[Payment], Import]:
        """The same rows every run, with every "already done" flag cleared."""
        recipients = []
        for name, phone, email in RECIPIENTS:
            recipient, _ = Recipient.objects.update_or_create(
                name=name, defaults={"phone": phone, "email": email, "welcome_email_sent_at": None}
            )
            recipients.append(recipient)
        tasks = []
        for tracking_number, who in TASKS:
            task, _ = Task.objects.update_or_create(
                tracking_number=tracking_number,
                defaults={
                    "recipient": recipients[who], "status": Task.Status.CREATED,
                    "notification_sent_at": None, "reminder_sent_at": None, "carrier_reference": "",
                    "external_data": None, "synced_at": None, "pickup_at": None,
                },
            )
            tasks.append(task)
        payments = []
        for task, amount in ((tasks[0], "49.90"), (tasks[3], "12.00")):
            payment, _ = Payment.objects.update_or_create(
                task=task, defaults={"amount": Decimal(amount), "status": Payment.Status.PENDING, "captured_at": None}
            )
            payments.append(payment)
        addresses = [r.phone for r in recipients if r.phone] + [r.email for r in recipients if r.email]
        OutboxMessage.objects.filter(to__in=addresses).delete()
        source, _ = Import.objects.update_or_create(name="demo-tasks.csv", defaults={"csv": import_csv(), "job_id": ""})
        return recipients, tasks, payments, source

    def enqueue(
        self, control: CarrierControl, admin: Any, recipients: list[Recipient], tasks: list[Task],
        payments: list[Payment], source: Import,
    ) -> list[Scenario]:
        scenarios: list[Scenario] = []
        t = [task.pk for task in tasks]

        def run(label: str, expect: str, enqueue: Callable[[], Any], follow_copies: bool = False) -> None:
            job = enqueue()
            if not job and expect != REFUSED:
                raise CommandError(f"{label}: not enqueued (a callback halted it, or a lock is still held)")
            job_id = job.job_id if job else None
            scenarios.append(
                Scenario(label, type(job).__name__, job.queue_name or "", expect, job_id, time.time(), follow_copies)
            )

        def fault(request: str, task: int, *faults: str, then: str = "ok") -> None:
            control.plan(f"{request}/{tasks[task].tracking_number}", *faults, then=then)

        def start_import() -> Any:
            job = perform_later_with_progress(jobs.ImportJob, source.pk, started_by=admin)
            Import.objects.filter(pk=source.pk).update(job_id=job.job_id)
            return job

        J = jobs
        run("payment, priority 50", SUCCEEDED, lambda: J.PaymentProcessingJob.set(priority=50).perform_later(payments[0].pk))
        run("payment", SUCCEEDED, lambda: J.PaymentProcessingJob.perform_later(payments[1].pk))
        run("urgent re-plan", SUCCEEDED, lambda: J.FlexibleJob.perform_later(t[1], "high"))
        run("normal re-plan", SUCCEEDED, lambda: J.FlexibleJob.perform_later(t[2], "normal"))
        for copy in (1, 2):
            run(f"created SMS, copy {copy}", SUCCEEDED, lambda: J.TaskNotificationJob.perform_later(t[0], notification_type="created"))
        run("delivered email", SUCCEEDED, lambda: J.TaskNotificationJob.perform_later(t[3], notification_type="delivered"))
        run("welcome email", SUCCEEDED, lambda: J.SendWelcomeEmailJob.perform_later(recipients[0].pk))

        run("book, carrier ok", SUCCEEDED, lambda: J.ExternalApiJob.perform_later(t[4]))
        fault("PUT /shipments", 5, "error")
        run("book, 503 once", RETRIED, lambda: J.ExternalApiJob.perform_later(t[5]))
        fault("PUT /shipments", 6, "rate_limit")
        run("book, 429 once", RETRIED, lambda: J.ExternalApiJob.perform_later(t[6]))
        fault("PUT /shipments", 7, "client_error")
        run("book, carrier says 422", DISCARDED, lambda: J.ExternalApiJob.perform_later(t[7]))
        fault("PUT /shipments", 8, then="drop")
        run("book, carrier down", DEAD, lambda: J.ExternalApiJob.perform_later(t[8]))
        run("sync, carrier ok", SUCCEEDED, lambda: J.SyncExternalDataJob.perform_later(t[4]))
        fault("GET /shipments", 9, "slow")
        run("sync, slow once", RETRIED, lambda: J.SyncExternalDataJob.perform_later(t[9]))
        fault("GET /shipments", 10, "not_found")
        run("sync, carrier says 404", DISCARDED, lambda: J.SyncExternalDataJob.perform_later(t[10]))
        fault("PUT /pickups", 0, "rate_limit")
        run("pickup, 429 once", REENQUEUED, lambda: J.ManualRetryJob.perform_later(t[0]), follow_copies=True)
        fault("PUT /pickups", 1, "gone")
        run("pickup, carrier says 410", SUCCEEDED, lambda: J.ManualRetryJob.perform_later(t[1]))
        # More syncs at once than the carrier takes in a second: the shared limiter spreads them.
        burst = [J.SyncExternalDataJob(pk) for pk in t * BURST]
        ApplicationJob.perform_all_later(burst)
        scenarios.append(Scenario(
            f"{len(burst)} syncs at once", "SyncExternalDataJob", burst[0].queue_name or "", SUCCEEDED,
            burst[0].job_id, time.time(), together=[job.job_id for job in burst[1:]],
        ))

        run("bulk status update", SUCCEEDED, lambda: J.BulkUpdateJob.perform_later(t[2:5], {"status": "in_transit"}))
        run(f"import {IMPORT_ROWS} rows", SUCCEEDED, start_import)
        run("recount, copy 1", SUCCEEDED, lambda: J.UniqueProcessingJob.perform_later(recipients[2].pk, {"reason": "import"}))
        run("recount, copy 2", REFUSED, lambda: J.UniqueProcessingJob.perform_later(recipients[2].pk, {"reason": "status"}))
        run(f"reminder in {REMINDER_DELAY.seconds}s", SUCCEEDED, lambda: J.TaskReminderJob.set(wait=REMINDER_DELAY).perform_later(t[1]))
        run("newsletter", SUCCEEDED, lambda: J.SendNewsletterJob.perform_later([r.pk for r in recipients], "2026-01"))

        # The recurring jobs, run now (as the dashboard's "run now" does); their schedule goes on.
        for entry in api.recurring(count=1):
            job_id = api.run_recurring_now(entry["name"])
            job_class = entry["class"].rsplit(".", 1)[-1]
            scenarios.append(Scenario(f"{entry['name']}, run now", job_class, entry["queue"], SUCCEEDED, job_id, time.time()))
        return scenarios

    # -- waiting ---------------------------------------------------------------------------------

    def observe(self, scenario: Scenario) -> Observed:
        if scenario.job_id is None:
            return Observed(REFUSED)
        if scenario.together:
            return self.observe_together(scenario)
        runs = list(JobRun.objects.filter(job_id=scenario.job_id).order_by("started_at"))
        if scenario.follow_copies and runs:
            runs += JobRun.objects.filter(
                job_class=scenario.job_class, arguments=runs[0].arguments, started_at__gt=runs[0].started_at
            ).exclude(job_id=scenario.job_id).order_by("started_at")
        if not runs:
            return Observed("waiting")
        last = runs[-1].fate
        if last == JobRun.Outcome.DEAD:
            written = DeadJob.objects.filter(job_id=scenario.job_id).exists()
            return Observed(DEAD if written else "dying", runs)
        if scenario.follow_copies and runs[-1].job_id == scenario.job_id and runs[-1].result.startswith("rate limited"):
            return Observed("retrying", runs)  # its copy has not started yet
        state = {JobRun.Outcome.RETRIED: "retrying"}.get(last, last)
        return Observed(state, runs)

    def observe_together(self, scenario: Scenario) -> Observed:
        """Jobs enqueued together: succeeded once each has; else how the first unfinished is."""
        ids = [scenario.job_id, *scenario.together]
        runs = list(JobRun.objects.filter(job_id__in=ids).order_by("started_at"))
        last = {run.job_id: run.fate for run in runs}
        pending = [last.get(job_id, "waiting") for job_id in ids if last.get(job_id) != SUCCEEDED]
        return Observed(pending[0] if pending else SUCCEEDED, runs)

    def wait(self, scenarios: list[Scenario], source: Import, timeout: float) -> list[str]:
        """Until every scenario is final, the import's progress too, and the queues, schedule
        and retries are empty; returns the import's progress as seen while waiting. (Between two
        runs of the resumable import, its last run is over, and the next one may be fetched and
        not yet counted busy: its progress says it is not done.)"""
        deadline = time.monotonic() + timeout
        trail: list[str] = []
        source.refresh_from_db()  # its job_id, set when the import was enqueued
        while True:
            progress = JobProgress.objects.filter(job_id=source.job_id).first()
            if progress is not None:
                seen = f"{progress.status} {progress.processed}/{progress.total or '?'}"
                if not trail or trail[-1] != seen:
                    trail.append(seen)
            stats = api.stats()
            idle = stats.enqueued + stats.scheduled + stats.retries + stats.busy == 0
            imported = progress is not None and progress.status not in ("pending", "processing")
            if idle and imported and all(self.observe(s).final for s in scenarios):
                return trail
            if time.monotonic() >= deadline:
                return trail
            time.sleep(0.1)

    # -- reporting -------------------------------------------------------------------------------

    def summary(
        self, scenarios: list[Scenario], source: Import, trail: list[str], control: CarrierControl, started: float
    ) -> bool:
        write = self.stdout.write
        since = datetime.fromtimestamp(started, UTC)
        write("")
        write(f"{'job':<21} {'queue':<13} {'scenario':<24} {'expected':<11} {'runs':>4}  outcome")
        ok = True
        for s in scenarios:
            observed = self.observe(s)
            good = observed.matches(s.expect)
            ok &= good
            last = observed.runs[-1] if observed.runs else None
            detail = (last.result or last.error) if last else ""
            said = observed.state + (f" after {observed.retries} retr{'y' if observed.retries == 1 else 'ies'}" if observed.retries else "")
            if s.expect == REENQUEUED and good:
                said = f"re-enqueued itself, copy {observed.state}"
            text = f"{said}: {detail}" if detail else said
            if len(text) > 72:
                text = text[:71] + "…"
            write(
                f"{s.job_class:<21} {s.queue:<13} {s.label:<24} {s.expect:<11} {len(observed.runs):>4}  "
                f"{text}{'' if good else '   <-- NOT AS EXPECTED'}"
            )

        runs = JobRun.objects.filter(started_at__gte=since)
        fates = Counter(run.fate for run in runs.only("status", "outcome"))
        planned_ids = {s.job_id for s in scenarios if s.job_id}
        run_ids = set(runs.values_list("job_id", flat=True))
        dead_rows = DeadJob.objects.filter(job_id__in=run_ids).count()
        write("")
        write(
            f"enqueued  {len(planned_ids)} by the demo ({sum(s.job_id is None for s in scenarios)} more refused by a unique lock), "
            f"{len(run_ids - planned_ids)} by the jobs themselves"
        )
        write(
            f"run       {sum(fates.values())} times: {fates[JobRun.Status.SUCCEEDED]} succeeded, "
            f"{fates[JobRun.Outcome.RETRIED]} retried, {fates[JobRun.Outcome.DISCARDED]} discarded, "
            f"{fates[JobRun.Outcome.DEAD]} dead ({dead_rows} in the dead jobs table), "
            f"{fates[JobRun.Outcome.LIMITED]} put back by the carrier's rate limit"
        )
        reports = Counter(ErrorReport.objects.filter(reported_at__gte=since).values_list("source", flat=True))
        write("reported  " + (", ".join(f"{n} {what}" for what, n in sorted(reports.items())) or "nothing"))
        requests = control.requests()
        faults = Counter(r["fault"] for r in requests)
        write(f"carrier   {len(requests)} requests" + "".join(f", {n} {f}" for f, n in faults.most_common()))
        # The carrier's own limit (its 429s not planned as faults): never reached, thanks to the limiter.
        write(f"          {faults['over_limit']} over the carrier's own rate limit (429) with {jobs.carrier_api!r}")
        ok &= faults["over_limit"] == 0

        progress = JobProgress.objects.filter(job_id=source.job_id).first()
        if progress is None:
            write(f"import    {source.name}: no progress row")
            ok = False
        else:
            # ImportJob is resumable: each run stops after IMPORTS["MAX_RUNTIME"] (short in the demo)
            # and the next one goes on from there.
            runs = list(JobRun.objects.filter(job_id=source.job_id).order_by("started_at"))
            write(
                f"import    {source.name}: {progress.status}, {progress.processed}/{progress.total or '?'} rows "
                f"({progress.percent:.1f}%), {progress.error_count} refused, in {len(runs)} run(s); "
                f"seen while waiting: {' -> '.join(trail)}"
            )
            for number, run in enumerate(runs[:-1][:3], start=1):
                write(f"            run {number} {run.result}; run {number + 1} went on from there")
            if len(runs) > 4:
                write(f"            ({len(runs) - 4} more like these)")
            for detail in progress.error_details[:5]:
                write(f"            line {detail['row']}: {detail['error']}")
            ok &= (progress.status, progress.processed, progress.error_count) == (
                "completed_with_errors", IMPORT_ROWS, len(IMPORT_BAD_LINES),
            )
        for entry in api.recurring(count=1):
            last = entry["last_run"]
            write(
                f"recurring {entry['name']:<14} cron {entry['cron']!r:<13} next {entry['next_runs'][0]:%Y-%m-%d %H:%M %Z}"
                + (f", last tick {last['tick']:%Y-%m-%d %H:%M}" if last and last["tick"] else "")
                + (f", run now at {last['manual_at']:%H:%M:%S}" if last and last["manual_at"] else "")
            )
        verdict = "as expected" if ok else "NOT as expected"
        write(f"{len(scenarios)} scenarios, {verdict}, in {time.time() - started:.1f}s.")
        return ok
