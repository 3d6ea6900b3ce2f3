from django.contrib import admin

from deliveries.models import JobRun, OutboxMessage, Payment, Recipient, Task


@admin.register(Recipient)
class RecipientAdmin(admin.ModelAdmin):
    list_display = ("name", "phone", "email", "welcome_email_sent_at")
    search_fields = ("name", "phone", "email")


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("tracking_number", "recipient", "status", "notification_sent_at", "reminder_sent_at")
    list_filter = ("status",)
    search_fields = ("tracking_number",)


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ("task", "amount", "status", "captured_at")
    list_filter = ("status",)


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ("sent_at", "channel", "to", "kind", "subject", "job_id")
    list_filter = ("channel", "kind")


@admin.register(JobRun)
class JobRunAdmin(admin.ModelAdmin):
    list_display = ("started_at", "job_class", "queue", "status", "result", "execution", "pid", "job_id")
    list_filter = ("status", "queue", "job_class")
    search_fields = ("job_id",)
    readonly_fields = [f.name for f in JobRun._meta.fields]
