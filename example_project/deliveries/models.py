"""Recipients, the delivery tasks sent to them, payments, and what the jobs did."""

from django.db import models


class Recipient(models.Model):
    name = models.CharField(max_length=120)
    phone = models.CharField(max_length=32, blank=True)
    email = models.EmailField(blank=True)
    welcome_email_sent_at = models.DateTimeField(null=True, blank=True)

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


class JobRun(models.Model):
    """One execution of a job, written by ``DeliveryJob``'s ``around_perform`` callback."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    job_id = models.CharField(max_length=32, db_index=True)
    job_class = models.CharField(max_length=200)
    queue = models.CharField(max_length=64, blank=True)
    arguments = models.JSONField(default=dict)
    execution = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    result = models.TextField(blank=True)
    error = models.TextField(blank=True)
    pid = models.PositiveIntegerField(null=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.job_class} {self.job_id} ({self.status})"
