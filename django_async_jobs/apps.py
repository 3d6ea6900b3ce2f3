from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class AsyncJobsConfig(AppConfig):
    name = "django_async_jobs"
    verbose_name = "Jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Like admin.py: every installed app's jobs.py registers its job classes, so a worker
        # knows them by name without ever importing a path taken from a payload.
        autodiscover_modules("jobs")
        from django_async_jobs import checks  # noqa: F401  (registers the system checks)
