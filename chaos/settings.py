"""Django settings of the fault suite's workers and harness, from the environment the harness
sets (``CHAOS_*``): each scenario has its own Redis, key prefix and worker settings."""

import json
import os

import dj_database_url

SECRET_KEY = "chaos-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_async_jobs",
    "chaos",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {"default": dj_database_url.parse(os.environ.get("CHAOS_DATABASE_URL", "sqlite:///chaos.sqlite3"))}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["OPTIONS"] = {"timeout": 20}  # several processes write dead jobs

ASYNC_JOBS = {
    "REDIS_URL": os.environ.get("CHAOS_REDIS_URL", "redis://127.0.0.1:6379/15"),
    "KEY_PREFIX": os.environ.get("CHAOS_KEY_PREFIX", "chaos"),
    "QUEUES": ["default"],
    "CONCURRENCY": 4,
    "HEARTBEAT_TIMEOUT": 4,
    "SHUTDOWN_TIMEOUT": 5,
    "POLL_INTERVAL": 0.2,
    "LOG_JOBS": True,
}
ASYNC_JOBS.update(json.loads(os.environ.get("CHAOS_OVERRIDES", "{}")))
