"""Plain functions the django.tasks backend tests turn into ``@task``s (under their TASKS
setting). They report through Redis under the key they are given."""

import asyncio

from django_async_jobs.broker.client import get_broker


class Boom(Exception):
    pass


def add(a, b):
    return a + b


async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b


def attempts(context, key, fail_times):
    get_broker().redis.rpush(key, context.attempt)
    if context.attempt <= fail_times:
        raise Boom(f"attempt {context.attempt}")
    return context.task_result.id


def boom():
    raise Boom("always")
