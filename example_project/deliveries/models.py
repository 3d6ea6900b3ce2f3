"""Recipients, the delivery tasks sent to them, payments, CSV imports, and what the jobs did."""

import csv
import io

from django.db import models


class Recipient(models.Model):
    name = models.CharField(max_length=120)
    phone = models.CharField(max_length=32, blank=True)
    email = models.EmailField(blank=True)
    welcome_email_sent_at = models.DateTimeField(null=True, blank=True)
    task_counts = models.JSONField(
        default=dict, blank=True, help_text="Tasks per status, recounted by UniqueProcessingJob."
    )
    counted_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class Task(models.Model):
    class Status(models.TextChoices):
        CREATED = "created"
        IN_TRANSIT = "in_transit"
        DELIVERED = "delivered"
        CANCELLED = "cancelled"

    tracking_number = models.CharField(max_length=32, unique=True)
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="tasks")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CREATED)
    notification_sent_at = models.DateTimeField(null=True, blank=True)
    reminder_sent_at = models.DateTimeField(null=True, blank=True)
    carrier_reference = models.CharField(
        max_length=32, blank=True, help_text="The carrier's booking reference (ExternalApiJob)."
    )
    external_data = models.JSONField(
        null=True, blank=True, help_text="The carrier's tracking data (SyncExternalDataJob)."
    )
    synced_at = models.DateTimeField(null=True, blank=True)
    pickup_at = models.DateTimeField(null=True, blank=True, help_text="When the carrier picks it up (ManualRetryJob).")

    def __str__(self) -> str:
        return self.tracking_number


class Payment(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        CAPTURED = "captured"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="payments")
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    captured_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.amount} for {self.task}"


class OutboxMessage(models.Model):
    """A simulated SMS or email: "sending" one writes a row here instead of calling a gateway."""

    class Channel(models.TextChoices):
        SMS = "sms"
        EMAIL = "email"

    channel = models.CharField(max_length=8, choices=Channel.choices)
    to = models.CharField(max_length=254)
    subject = models.CharField(max_length=200, blank=True)
    body = models.TextField()
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    kind = models.CharField(max_length=32, blank=True, help_text="What the message is about, e.g. task_created.")
    job_id = models.CharField(max_length=32, blank=True)
    sent_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-sent_at"]

    def __str__(self) -> str:
        return f"{self.channel} to {self.to}: {self.kind or self.subject}"


class Import(models.Model):
    """A CSV file of tasks (``tracking_number,name,phone,email``), imported by ``ImportJob``."""

    COLUMNS = ("tracking_number", "name", "phone", "email")

    name = models.CharField(max_length=120)
    csv = models.TextField(help_text="A header line with " + ", ".join(COLUMNS) + ", then one task per line.")
    job_id = models.CharField(max_length=32, blank=True, help_text="The ImportJob that imports it (its progress).")
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    def rows(self) -> list[tuple[int, dict[str, str]]]:
        """``(line number, row)`` per task line; missing cells are empty strings."""
        reader = csv.DictReader(io.StringIO(self.csv.strip()))
        return [(reader.line_num, {c: (row.get(c) or "").strip() for c in self.COLUMNS}) for row in reader]


class ErrorReport(models.Model):
    """An error sent to the error tracker, as the guide sends them to Sentry; kept here instead."""

    reported_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=32, help_text="job failed, job died or permanent failure.")
    job_class = models.CharField(max_length=200, blank=True)
    job_id = models.CharField(max_length=32, blank=True, db_index=True)
    error = models.TextField()
    context = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-reported_at"]

    def __str__(self) -> str:
        return f"{self.source}: {self.job_class} {self.error[:60]}"


class JobRun(models.Model):
    """One execution of a job, written by ``DeliveryJob``'s ``around_perform`` callback.

    A failed execution then gets the ``outcome`` the retry rules chose (``deliveries.hooks``).
    """

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Outcome(models.TextChoices):
        RETRIED = "retried", "retry scheduled"
        DISCARDED = "discarded"
        DEAD = "dead"
        LIMITED = "limited", "over a rate limit: put back for later"

    job_id = models.CharField(max_length=32, db_index=True)
    job_class = models.CharField(max_length=200)
    queue = models.CharField(max_length=64, blank=True)
    arguments = models.JSONField(default=dict)
    execution = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    outcome = models.CharField(
        max_length=16, choices=Outcome.choices, blank=True, help_text="What the retry rules did after a failure (or a rate limit, after an OverLimit)."
    )
    result = models.TextField(blank=True)
    error = models.TextField(blank=True)
    pid = models.PositiveIntegerField(null=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.job_class} {self.job_id} ({self.fate})"

    @property
    def fate(self) -> str:
        """running, succeeded, retried, discarded, dead, or limited (a rate limit put the job back
        to run again); failed while the rules have not decided (or for ``perform_now``, which has
        no rules)."""
        return self.outcome or self.status
