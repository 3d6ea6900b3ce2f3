"""The bench project on PostgreSQL with the outbox on, for ``bench/outbox.py``, which sets the
environment: BENCH_OUTBOX_DATABASE (a postgres:// URL), BENCH_OUTBOX_REDIS (the queues' Redis
URL) and BENCH_OUTBOX_PREFIX (a key prefix of the run's own)."""

import os
from urllib.parse import unquote, urlsplit

from bench.djproject.settings import *  # noqa: F403
from bench.djproject.settings import ASYNC_JOBS

_url = urlsplit(os.environ["BENCH_OUTBOX_DATABASE"])
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or "postgres"),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": _url.port or 5432,
    }
}
ASYNC_JOBS = {
    **ASYNC_JOBS,
    "REDIS_URL": os.environ["BENCH_OUTBOX_REDIS"],
    "KEY_PREFIX": os.environ["BENCH_OUTBOX_PREFIX"],
    "OUTBOX": True,
}
