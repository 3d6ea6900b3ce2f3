"""A minimal Django project for the bench: our app, one job app, no database work."""

from bench.config import REDIS_DB, redis_url

SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_async_jobs",
    "bench.djapp",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ASYNC_JOBS = {
    "REDIS_URL": redis_url(REDIS_DB["ours"]),
    "KEY_PREFIX": "bench",
    "QUEUES": ["default"],
    "CONCURRENCY": 10,
}
