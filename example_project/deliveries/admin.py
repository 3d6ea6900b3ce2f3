from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from deliveries.models import ErrorReport, Import, JobRun, OutboxMessage, Payment, Recipient, Task
from django_async_jobs.models import JobProgress
from django_async_jobs.progress import perform_later_with_progress


class RecordAdmin(admin.ModelAdmin):
    """Rows the jobs write as a record of what happened: shown, never added or edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Recipient)
class RecipientAdmin(admin.ModelAdmin):
    list_display = ("name", "phone", "email", "welcome_email_sent_at", "task_counts", "counted_at")
    search_fields = ("name", "phone", "email")


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = (
        "tracking_number", "recipient", "status", "carrier_reference", "synced_at", "pickup_at",
        "notification_sent_at", "reminder_sent_at",
    )
    list_filter = ("status",)
    search_fields = ("tracking_number", "carrier_reference")


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ("task", "amount", "status", "captured_at")
    list_filter = ("status",)


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ("sent_at", "channel", "to", "kind", "subject", "job_id")
    list_filter = ("channel", "kind")


@admin.register(Import)
class ImportAdmin(admin.ModelAdmin):
    """CSV imports; the "Import" action enqueues an ``ImportJob`` whose progress shows here."""

    list_display = ("name", "created", "progress", "job_id")
    readonly_fields = ("job_id",)
    actions = ["start_import"]

    @admin.display(description="progress")
    def progress(self, obj: Import) -> str:
        row = JobProgress.objects.filter(job_id=obj.job_id, name="").first() if obj.job_id else None
        if row is None:
            return "not started"
        text = f"{row.status}, {row.processed}/{row.total or '?'} ({row.percent:.0f}%)"
        return text + (f", {row.error_count} refused" if row.error_count else "")

    @admin.action(description="Import the selected files (in the background)")
    def start_import(self, request: HttpRequest, queryset: QuerySet[Import]) -> None:
        from deliveries.jobs import ImportJob

        for source in queryset:
            job = perform_later_with_progress(ImportJob, source.pk, started_by=request.user)
            Import.objects.filter(pk=source.pk).update(job_id=job.job_id)
        self.message_user(request, f"{queryset.count()} import(s) enqueued on the bulk queue.", messages.SUCCESS)


@admin.register(ErrorReport)
class ErrorReportAdmin(RecordAdmin):
    list_display = ("reported_at", "source", "job_class", "error", "job_id")
    list_filter = ("source", "job_class")
    search_fields = ("job_id", "error")


@admin.register(JobRun)
class JobRunAdmin(RecordAdmin):
    list_display = ("started_at", "job_class", "queue", "status", "outcome", "result", "execution", "pid", "job_id")
    list_filter = ("status", "outcome", "queue", "job_class")
    search_fields = ("job_id",)
