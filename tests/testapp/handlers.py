"""ERROR_HANDLERS / DEATH_HANDLERS used by the tests; they record calls in Redis."""

import json

from django_async_jobs.broker.client import get_broker


def record_error(payload, exc):
    get_broker().redis.rpush(f"{payload['args'][0]}:errors", json.dumps([payload["jid"], type(exc).__name__]))


def record_death(payload, exc):
    get_broker().redis.rpush(f"{payload['args'][0]}:deaths", json.dumps([payload["jid"], type(exc).__name__]))


def broken(payload, exc):
    raise RuntimeError("a broken handler")
