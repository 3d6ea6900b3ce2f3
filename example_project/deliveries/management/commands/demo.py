"""``manage.py demo``: sample data, one job per queue, and (with ``--wait``) a summary of what
the worker did with them. ``example_project/demo.sh`` runs it next to a worker."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from deliveries import jobs
from deliveries.models import JobRun, OutboxMessage, Payment, Recipient, Task
from django_async_jobs.broker.client import get_broker
from django_async_jobs.conf import get_settings

RECIPIENTS = [
    ("Ana Lima", "+15550100001", "ana@example.com"),
    ("Ben Okafor", "+15550100002", ""),
    ("Chloe Martin", "", "chloe@example.com"),
]
TASKS = [("DEMO-0001", 0), ("DEMO-0002", 0), ("DEMO-0003", 1), ("DEMO-0004", 2), ("DEMO-0005", 1)]
REMINDER_DELAY = timedelta(seconds=3)


def clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S.%f")[:12]


@dataclass
class Planned:
    label: str
    job: Any
    enqueued_at: float


class Command(BaseCommand):
    help = "Create sample recipients and tasks, enqueue one job per queue, optionally wait for them."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--wait", type=float, default=0, metavar="SECONDS",
            help="Wait up to SECONDS for a worker to run every job, print a summary, and fail "
            "if some did not run (default: enqueue and return).",
        )
        parser.add_argument("--no-admin", action="store_true", help="Do not create the admin user.")

    def handle(self, *args: Any, **options: Any) -> None:
        settings = get_settings()
        broker = get_broker()
        try:
            broker.redis.ping()
        except Exception as exc:
            raise CommandError(f"Redis at {settings.redis_url} does not answer: {exc}") from exc
        if not options["no_admin"]:
            self.ensure_admin()
        recipients, tasks, payments = self.sample_data()
        processed_before = broker.stat("processed")
        started = time.time()
        planned = self.enqueue(recipients, tasks, payments)
        self.stdout.write(
            f"Enqueued {len(planned)} jobs on Redis {settings.redis_url} (KEY_PREFIX {settings.key_prefix!r})."
        )
        if options["wait"] <= 0:
            return
        ok = self.wait(planned, processed_before, options["wait"])
        self.summary(planned, processed_before, started)
        if not ok:
            raise CommandError(
                f"Not every job ran successfully within {options['wait']:.0f}s: is a worker running "
                f"(python manage.py runworker) on the same Redis and KEY_PREFIX?"
            )

    # -- set-up ----------------------------------------------------------------------------------

    def ensure_admin(self) -> None:
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(
            username="admin", defaults={"email": "admin@example.com"}
        )
        user.is_staff = user.is_superuser = True
        user.set_password("admin")
        user.save()
        self.stdout.write("Admin user: admin / admin")

    def sample_data(self) -> tuple[list[Recipient], list[Task], list[Payment]]:
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
                    "notification_sent_at": None, "reminder_sent_at": None,
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
        return recipients, tasks, payments

    def enqueue(self, recipients: list[Recipient], tasks: list[Task], payments: list[Payment]) -> list[Planned]:
        ids = [r.pk for r in recipients]
        plan = [
            ("payment, priority 50", lambda: jobs.PaymentProcessingJob.set(priority=50).perform_later(payments[0].pk)),
            ("payment", lambda: jobs.PaymentProcessingJob.perform_later(payments[1].pk)),
            ("urgent re-plan", lambda: jobs.FlexibleJob.perform_later(tasks[1].pk, "high")),
            ("normal re-plan", lambda: jobs.FlexibleJob.perform_later(tasks[2].pk, "normal")),
            ("created SMS, copy 1", lambda: jobs.TaskNotificationJob.perform_later(tasks[0].pk, notification_type="created")),
            ("created SMS, copy 2", lambda: jobs.TaskNotificationJob.perform_later(tasks[0].pk, notification_type="created")),
            ("delivered email", lambda: jobs.TaskNotificationJob.perform_later(tasks[3].pk, notification_type="delivered")),
            ("welcome email", lambda: jobs.SendWelcomeEmailJob.perform_later(recipients[0].pk)),
            ("carrier data", lambda: jobs.SyncExternalDataJob.perform_later(tasks[4].pk)),
            ("bulk status update", lambda: jobs.BulkUpdateJob.perform_later([t.pk for t in tasks[2:]], {"status": "in_transit"})),
            (f"reminder in {REMINDER_DELAY.seconds}s", lambda: jobs.TaskReminderJob.set(wait=REMINDER_DELAY).perform_later(tasks[1].pk)),
            ("newsletter", lambda: jobs.SendNewsletterJob.perform_later(ids, "2026-01")),
        ]
        planned = []
        for label, enqueue in plan:
            job = enqueue()
            if not job:
                raise CommandError(f"{label}: the enqueue was halted by a callback")
            planned.append(Planned(label, job, time.time()))
        return planned

    # -- waiting and reporting -------------------------------------------------------------------

    def runs(self, planned: list[Planned]) -> dict[str, JobRun]:
        ids = [p.job.job_id for p in planned]
        latest: dict[str, JobRun] = {}
        for run in JobRun.objects.filter(job_id__in=ids).order_by("started_at"):
            latest[run.job_id] = run
        return latest

    def wait(self, planned: list[Planned], processed_before: int, timeout: float) -> bool:
        broker = get_broker()
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs(planned)
            done = [r for r in runs.values() if r.status == JobRun.Status.SUCCEEDED]
            # The worker acknowledges in batches just after perform returns: wait for the counter.
            acked = broker.stat("processed") - processed_before >= len(planned)
            if len(done) == len(planned) and acked:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def summary(self, planned: list[Planned], processed_before: int, started: float) -> None:
        broker = get_broker()
        settings = get_settings()
        runs = self.runs(planned)
        write = self.stdout.write
        write("")
        write(f"{'job':<22} {'queue':<14} {'what':<22} {'enqueued':<12} {'ran':>7}  result")
        enqueued_per_queue: Counter[str] = Counter()
        ran_per_queue: Counter[str] = Counter()
        for p in planned:
            queue = p.job.queue_name
            enqueued_per_queue[queue] += 1
            run = runs.get(p.job.job_id)
            if run is None:
                ran, result = "no", "(did not run)"
            else:
                ran_after = run.started_at.timestamp() - p.enqueued_at
                ran = f"+{ran_after:.1f}s" if run.status == JobRun.Status.SUCCEEDED else run.status
                result = run.result if run.status != JobRun.Status.FAILED else run.error
                if run.status == JobRun.Status.SUCCEEDED:
                    ran_per_queue[queue] += 1
            write(
                f"{type(p.job).__name__:<22} {queue:<14} {p.label:<22} "
                f"{clock(p.enqueued_at):<12} {ran:>7}  {result}"
            )
        write("")
        write("ran: seconds from enqueue to start. Both copies of the created SMS ran; one sent it.")
        write("per queue (weight): ran / enqueued, waiting in Redis now")
        for name, weight in zip(settings.queues.names, settings.queues.weights, strict=True):
            write(
                f"  {name:<14} ({weight})  {ran_per_queue[name]} / {enqueued_per_queue[name]}, "
                f"{broker.queue_size(name)} waiting"
            )
        processed = broker.stat("processed")
        failed = broker.stat("failed")
        write(
            f"Redis counters for prefix {settings.key_prefix!r}: processed {processed} "
            f"(+{processed - processed_before} in this run), failed {failed}"
        )
        total = sum(ran_per_queue.values())
        write(f"{total} of {len(planned)} jobs ran successfully in {time.time() - started:.1f}s.")
