"""Settings of the example project: a delivery service that notifies recipients about tasks.

Everything that differs between a laptop, CI and production comes from the environment:
``REDIS_URL``, ``ASYNC_JOBS_KEY_PREFIX``, ``DATABASE_URL`` (SQLite in this folder when unset),
``WORKER_CONCURRENCY``, the carrier's ``CARRIER_API_URL``, ``CARRIER_API_TIMEOUT``,
``CARRIER_API_RETRY_WAIT_SCALE`` and ``CARRIER_API_RATE_LIMIT``, ``IMPORT_MAX_RUNTIME``,
``DJANGO_DEBUG`` and
``DJANGO_SECRET_KEY``.
"""

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_async_jobs",
    "deliveries",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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


def _database() -> dict:
    url = os.environ.get("DATABASE_URL")
    if url:
        import dj_database_url

        config = dj_database_url.parse(url)
        # Never share a test database name with the library's own suite on the same server.
        config["TEST"] = {"NAME": "test_example_project"}
        return config
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
        # A file, not SQLite's in-memory test database: the tests' worker threads write to it
        # at the same time. One per test run, so that runs side by side never share one.
        "TEST": {"NAME": Path(tempfile.gettempdir()) / f"example_project_test_{os.getpid()}.sqlite3"},
        # The worker writes from several threads while runserver and the demo read: wait for
        # the lock instead of failing, and take it when a transaction starts.
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

# The queues of the guide this project follows, as (name, weight): a worker picks a queue of
# weight 6 first six times as often as one of weight 1, and no queue starves.
ASYNC_JOBS = {
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "KEY_PREFIX": os.environ.get("ASYNC_JOBS_KEY_PREFIX", "demo"),
    "QUEUES": [
        ("critical", 6),  # payments, time-sensitive work
        ("default", 5),  # standard operations
        ("notifications", 4),  # SMS, email, push
        ("integrations", 3),  # external APIs, may be slow
        ("bulk", 2),  # batch processing, imports
        ("scheduled", 1),  # scheduled and recurring work
        ("low", 1),  # can wait
    ],
    "CONCURRENCY": int(os.environ.get("WORKER_CONCURRENCY", "5")),
    "SHUTDOWN_TIMEOUT": 10,
    "MAX_RETRIES": 5,  # the guide's sidekiq.yml: jobs without retry rules die after 5 retries
    "PROGRESS_EVERY": 10,  # the guide's import writes its progress every 10 rows
    "DEATH_HANDLERS": ["deliveries.hooks.report_death"],
    # The guide's recurring jobs (config/recurring.yml there); times in TIME_ZONE.
    "RECURRING": {
        "daily_cleanup": {"cron": "0 2 * * *", "class": "deliveries.jobs.DailyCleanupJob", "queue": "scheduled"},
        "hourly_sync": {"cron": "0 * * * *", "class": "deliveries.jobs.HourlySyncJob", "queue": "integrations"},
        "weekly_report": {"cron": "0 9 * * 1", "class": "deliveries.jobs.WeeklyReportJob", "queue": "low"},
    },
}

# The carrier's API (deliveries.carrier). The demo and the tests run deliveries.fake_carrier
# instead; they also shrink RETRY_WAIT_SCALE, the factor on the waits of the carrier jobs'
# retry rules, so that retries the guide spaces by minutes show within seconds. RATE_LIMIT is
# how many calls a second all the workers together make to it (deliveries.jobs.carrier_api):
# half of what the carrier allows (20; the fake one enforces it with --rate-limit), since a
# window's calls reach the carrier a moment later, maybe in its next second.
CARRIER_API = {
    "URL": os.environ.get("CARRIER_API_URL", "http://127.0.0.1:8765"),
    "TIMEOUT": float(os.environ.get("CARRIER_API_TIMEOUT", "5")),
    "RETRY_WAIT_SCALE": float(os.environ.get("CARRIER_API_RETRY_WAIT_SCALE", "1")),
    "RATE_LIMIT": int(os.environ.get("CARRIER_API_RATE_LIMIT", "10")),
}

# CSV imports (ImportJob, resumable) run at most MAX_RUNTIME seconds before going back to the
# bulk queue, to go on where they stopped; the demo makes it short, so that it shows a resume.
IMPORTS = {"MAX_RUNTIME": float(os.environ.get("IMPORT_MAX_RUNTIME", "300"))}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django_async_jobs": {"handlers": ["console"], "level": "INFO"},
        "deliveries": {"handlers": ["console"], "level": "INFO"},
    },
}
