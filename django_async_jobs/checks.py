"""System checks: settings mistakes surface at start-up, not as jobs that never run."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from django.conf import settings as django_settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from django.db.migrations.recorder import MigrationRecorder

from django_async_jobs import conf, cron, outbox, registry
from django_async_jobs.broker import cluster, sentinel
from django_async_jobs.deadjobs import retention
from django_async_jobs.middleware import chain, context

TAG = "async_jobs"
URL_SCHEMES = {"redis", "rediss", "unix", "fakeredis"}
MODES = {"redis", "test", "inline"}
LOG_FORMATS = {"text", "json"}
OUTBOX_MIGRATION = ("django_async_jobs", "0004_outboxjob")


@register(TAG, Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    raw = getattr(django_settings, "ASYNC_JOBS", {}) or {}
    errors: list[Any] = []
    if not isinstance(raw, dict):
        return [Error("ASYNC_JOBS must be a dict.", id="async_jobs.E001")]
    unknown = sorted(set(raw) - set(conf.DEFAULTS) - conf.LATER_KEYS)
    for key in unknown:
        errors.append(Warning(f"ASYNC_JOBS has an unknown key {key!r}.", hint="Check its spelling against the docs' configuration page.", id="async_jobs.W001"))
    merged = {**conf.DEFAULTS, **raw}
    try:
        spec = conf.parse_queues(merged["QUEUES"])
    except ValueError as exc:
        errors.append(Error(f"ASYNC_JOBS['QUEUES']: {exc}", id="async_jobs.E002"))
        spec = None
    url = merged["REDIS_URL"]
    if not merged["CACHE_ALIAS"]:
        errors.extend(_check_url(url))
    prefix = merged["KEY_PREFIX"]
    if not conf.valid_queue_name(prefix):
        # "app*" would make the prefix's SCAN pattern match another application's keys.
        errors.append(Error(
            f"ASYNC_JOBS['KEY_PREFIX'] = {prefix!r} is not a valid key prefix.",
            hint=f"Use {conf.QUEUE_NAME_RULE} (the queue names' rule): no ':', no glob characters *?[]\\.",
            id="async_jobs.E011",
        ))
    for key in ("CONCURRENCY", "MAX_RECOVERIES", "ASYNC_CONCURRENCY", "PROGRESS_EVERY"):
        value = merged[key]
        least = 0 if key == "MAX_RECOVERIES" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            errors.append(Error(f"ASYNC_JOBS['{key}'] must be an integer of at least {least}, got {value!r}.", id="async_jobs.E004"))
    for key in (
        "SHUTDOWN_TIMEOUT", "HEARTBEAT_TIMEOUT", "POLL_INTERVAL", "RESULT_TTL", "PROGRESS_SECONDS",
        "OUTBOX_POLL_INTERVAL", "BATCH_RETENTION",
    ):
        try:
            ok = conf._seconds(merged[key]) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            errors.append(Error(f"ASYNC_JOBS['{key}'] must be a positive number of seconds or a timedelta.", id="async_jobs.E005"))
    try:
        ok = conf._seconds(merged["CHECKPOINT_INTERVAL"]) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        errors.append(Error(
            "ASYNC_JOBS['CHECKPOINT_INTERVAL'] must be a number of seconds (or a timedelta) of at least 0.",
            hint="0 saves a resumable job's progress at every checkpoint; the default is 5.",
            id="async_jobs.E013",
        ))
    if merged["HEARTBEAT_INTERVAL"] is not None:
        # A beat as slow as the timeout makes live workers look dead: their jobs would run twice.
        try:
            ok = 0 < conf._seconds(merged["HEARTBEAT_INTERVAL"]) <= conf._seconds(merged["HEARTBEAT_TIMEOUT"]) / 2
        except (TypeError, ValueError):
            ok = False
        if not ok:
            errors.append(Error(
                "ASYNC_JOBS['HEARTBEAT_INTERVAL'] must be positive and at most half of HEARTBEAT_TIMEOUT.",
                hint="Leave it unset: it defaults to a sixth of the timeout.",
                id="async_jobs.E008",
            ))
    if merged["METRICS_RETENTION"] is not None:
        try:
            ok = conf._seconds(merged["METRICS_RETENTION"]) >= 60 and not isinstance(merged["METRICS_RETENTION"], bool)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            errors.append(Error(
                f"ASYNC_JOBS['METRICS_RETENTION'] must be None (no metrics) or at least 60 seconds (or a timedelta), "
                f"got {merged['METRICS_RETENTION']!r}.",
                hint="The default keeps 72 hours: 72 * 3600.",
                id="async_jobs.E014",
            ))
    if merged["LOG_FORMAT"] not in LOG_FORMATS:
        errors.append(Error(
            f"ASYNC_JOBS['LOG_FORMAT'] = {merged['LOG_FORMAT']!r}; use one of {sorted(LOG_FORMATS)}.",
            id="async_jobs.E016",
        ))
    token = merged["PROMETHEUS_TOKEN"]
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        errors.append(Error(
            "ASYNC_JOBS['PROMETHEUS_TOKEN'] must be None or a string of at least 16 characters.",
            hint="Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'.",
            id="async_jobs.E015",
        ))
    limit = merged["MAX_PAYLOAD_BYTES"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        errors.append(Error(
            f"ASYNC_JOBS['MAX_PAYLOAD_BYTES'] must be None (no limit) or a positive integer of bytes, got {limit!r}.",
            id="async_jobs.E012",
        ))
    partitions = merged["CLUSTER_PARTITIONS"]
    if isinstance(partitions, bool) or not isinstance(partitions, int) or not 1 <= partitions <= cluster.MAX_PARTITIONS:
        errors.append(Error(
            f"ASYNC_JOBS['CLUSTER_PARTITIONS'] must be an integer from 1 to {cluster.MAX_PARTITIONS}, got {partitions!r}.",
            id="async_jobs.E017",
        ))
    elif partitions > 1 and (merged["CACHE_ALIAS"] or not str(url).startswith(cluster.PREFIX)):
        # On one server every partition would live on it: more round trips for nothing.
        errors.append(Error(
            f"ASYNC_JOBS['CLUSTER_PARTITIONS'] = {partitions} needs a {cluster.PREFIX} REDIS_URL.",
            hint="Partitions spread the jobs over a cluster's masters; leave it at 1 on a single server or Sentinel.",
            id="async_jobs.E017",
        ))
    if merged["MODE"] not in MODES:
        errors.append(Error(f"ASYNC_JOBS['MODE'] = {merged['MODE']!r}; use one of {sorted(MODES)}.", id="async_jobs.E006"))
    prefetch = merged["PREFETCH"]
    if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0):
        errors.append(Error(
            f"ASYNC_JOBS['PREFETCH'] must be None (as many as CONCURRENCY) or an integer of at least 0, got {prefetch!r}.",
            id="async_jobs.E009",
        ))
    if not isinstance(merged["OUTBOX"], bool):
        errors.append(Error(f"ASYNC_JOBS['OUTBOX'] must be True or False, got {merged['OUTBOX']!r}.", id="async_jobs.E050"))
    databases = merged["OUTBOX_DATABASES"]
    aliases = list(django_settings.DATABASES)
    if isinstance(databases, str) or not isinstance(databases, (list, tuple)) or any(a not in aliases for a in databases):
        errors.append(Error(
            f"ASYNC_JOBS['OUTBOX_DATABASES'] must be a list of database aliases, got {databases!r}.",
            hint=f"The aliases of DATABASES are {aliases}.",
            id="async_jobs.E051",
        ))
    if "DEAD_JOB_RETENTION" in raw:
        try:
            retention()
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), id="async_jobs.E007"))
    if spec is not None:
        errors.extend(_check_job_queues(spec))
    for message in cron.problems(raw.get("RECURRING"), spec.names if spec else None):
        errors.append(Error(f"ASYNC_JOBS: {message}", id="async_jobs.E020"))
    return errors


def _check_url(url: Any) -> list[Any]:
    shown = repr(conf.redact_url(url)) if isinstance(url, str) else repr(url)
    for module, kind, section in ((sentinel, "Sentinel", "Sentinel"), (cluster, "Redis Cluster", "Redis Cluster")):
        if isinstance(url, str) and url.startswith(module.PREFIX):
            try:
                module.parse(url)
            except ValueError as exc:
                return [Error(
                    f"ASYNC_JOBS['REDIS_URL'] = {shown} is not a {kind} URL: {exc}.",
                    hint=f"Use {module.FORM}; the options are in the Deployment docs' {section} section.",
                    id="async_jobs.E003",
                )]
            return []
    parsed = urlparse(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in URL_SCHEMES or (parsed.scheme in ("redis", "rediss") and not parsed.hostname):
        return [Error(
            f"ASYNC_JOBS['REDIS_URL'] = {shown} is not a Redis URL.",
            hint=(
                "Use redis://host:6379/0, rediss://... for TLS, unix:///path/to/socket, "
                f"{sentinel.FORM} for Redis Sentinel, or {cluster.FORM} for Redis Cluster."
            ),
            id="async_jobs.E003",
        )]
    return []


@register(TAG, Tags.compatibility)
def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``MIDDLEWARE`` and ``CONTEXT`` import and fit every job class (what a job class's own
    ``middleware`` cannot serve is refused when the class is defined)."""
    try:
        conf.get_settings()
    except (TypeError, ValueError):
        return []  # check_settings reports what is wrong with the settings themselves
    errors: list[Any] = []
    for what, load, code in (
        ("MIDDLEWARE", chain.settings_middleware, "async_jobs.E030"),
        ("CONTEXT", context.variables, "async_jobs.E031"),
    ):
        try:
            load()
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), hint=f"See ASYNC_JOBS['{what}'] in the docs' middleware page.", id=code))
    if errors:
        return errors
    for _, job_class in sorted(registry.all_jobs().items()):
        try:
            chain.check_class(job_class, chain.settings_middleware())
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), obj=job_class, id="async_jobs.E032"))
    return errors


def _abstract(job_class: type) -> bool:
    """A base class: ``ApplicationJob``'s ``perform``, or ``IterableJob``'s ``build_enumerator``."""
    build = getattr(job_class, "build_enumerator", None)
    return job_class.perform.__qualname__ == "ApplicationJob.perform" or (
        build is not None and build.__qualname__ == "IterableJob.build_enumerator"
    )


def _check_job_queues(spec: conf.QueueSpec) -> list[Any]:
    errors = []
    for name, job_class in sorted(registry.all_jobs().items()):
        if _abstract(job_class):
            continue  # never enqueued itself
        # Inherited too: a job without queue_as goes to "default", which QUEUES may not list.
        queue_as = getattr(job_class, "queue_as", None)
        if isinstance(queue_as, str) and queue_as not in spec.names:
            errors.append(Error(
                f"{name}.queue_as = {queue_as!r}, a queue no worker reads.",
                hint=f"Add {queue_as!r} to ASYNC_JOBS['QUEUES'] (now {list(spec.names)}) or fix the name.",
                obj=job_class,
                id="async_jobs.E010",
            ))
    return errors


@register(TAG, Tags.compatibility)
def check_outbox(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """With the outbox in use, its table exists on every database it relays: a job written to
    a missing table fails its caller's transaction. A database out of reach is not reported."""
    try:
        if not outbox.in_use():
            return []
        databases = conf.get_settings().outbox_databases
    except (TypeError, ValueError):
        return []  # check_settings reports it
    warnings: list[Any] = []
    for alias in databases:
        if alias not in connections:
            continue  # E051
        try:
            applied = MigrationRecorder(connections[alias]).applied_migrations()
        except DatabaseError:
            continue
        if OUTBOX_MIGRATION not in applied:
            warnings.append(Warning(
                f"The outbox is on, but database {alias!r} has no outbox table yet "
                f"(migration {'.'.join(OUTBOX_MIGRATION)} has not run): jobs enqueued in a transaction "
                f"on it would fail.",
                hint=f"Run: python manage.py migrate django_async_jobs --database {alias}",
                id="async_jobs.W050",
            ))
    return warnings
