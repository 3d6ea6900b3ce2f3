"""Settings for the test suite: SQLite by default, PostgreSQL when DATABASE_URL says so."""

import json
import os

import dj_database_url
import django

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # the live server of the browser test serves the admin's CSS/JS
    "django_async_jobs",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "sqlite:///" + os.path.join(os.path.dirname(__file__), "test.sqlite3"))
    )
}
# A file, not SQLite's in-memory default: worker subprocesses in the tests open the same database.
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("TEST_DB_NAME") or os.path.join(os.path.dirname(__file__), "test_db.sqlite3")
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9")
ASYNC_JOBS = {
    "REDIS_URL": REDIS_URL,
    "QUEUES": [("critical", 6), ("default", 5), ("notifications", 4), ("low", 1)],
    "CONCURRENCY": 4,
    "KEY_PREFIX": os.environ.get("ASYNC_JOBS_KEY_PREFIX", "async_jobs_test"),
    "HEARTBEAT_TIMEOUT": 3,
    "SHUTDOWN_TIMEOUT": 3,
    "POLL_INTERVAL": 0.2,
}
# Worker subprocesses started by the reliability tests get per-test settings (a shorter timeout,
# fewer recoveries) as JSON, merged over the defaults above.
ASYNC_JOBS.update(json.loads(os.environ.get("ASYNC_JOBS_OVERRIDES", "{}")))

# Django 6.1 sends mail through MAILERS (and warns when none is set); the tests read mail.outbox.
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
