"""A minimal Django project for the bench: our app, one job app, no database work."""

import os

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
    # Default on, as in a real deployment; BENCH_LOG_JOBS=0 measures the per-job log lines' cost.
    "LOG_JOBS": os.environ.get("BENCH_LOG_JOBS", "1") == "1",
}
