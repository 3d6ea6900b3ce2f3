"""A Redis that accepts connections but never answers raises in time instead of hanging threads."""

import socket
import time

import pytest
import redis

from django_async_jobs.broker import client
from django_async_jobs.broker.client import Broker, get_broker
from django_async_jobs.conf import build, get_settings


@pytest.fixture
def mute_redis():
    """A listening socket nobody reads: the kernel completes the handshake, no reply ever comes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def test_script_and_plain_commands_time_out_on_a_mute_redis(mute_redis, monkeypatch):
    monkeypatch.setattr(client, "READ_TIMEOUT", 0.2)
    broker = Broker(build({"REDIS_URL": mute_redis, "KEY_PREFIX": "mute"}))
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        broker.push_routed(["default", 0, "{}"])  # the direct connection of the hot path
    with pytest.raises(redis.TimeoutError):
        broker.queue_size("default")  # redis-py's pool, with its own retries
    assert time.monotonic() - started < 10


def test_a_timeout_in_the_url_wins(mute_redis):
    broker = Broker(build({"REDIS_URL": f"{mute_redis}?socket_timeout=0.1", "KEY_PREFIX": "mute"}))
    assert broker.redis.connection_pool.connection_kwargs["socket_timeout"] == 0.1


def test_the_notify_channel_waits_longer_than_the_read_timeout(broker, monkeypatch):
    monkeypatch.setattr(client, "READ_TIMEOUT", 0.1)
    broker = Broker(get_settings())
    pubsub = broker.pubsub()
    try:
        assert pubsub.get_message(timeout=0.5) is None  # an idle wait, not a reply overdue
        get_broker().push_routed(["default", 0, '{"jid":"j","job":"x","queue":"default","args":[]}'])
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
        assert message is not None and message["data"] == b"ready"
    finally:
        pubsub.close()


def test_a_push_to_a_redis_that_stops_answering_times_out(redis_server):
    broker = Broker(build({"REDIS_URL": f"{redis_server.url}?socket_timeout=0.2", "KEY_PREFIX": "paused"}))
    broker.push_one("default", 0, '{"jid":"a"}')  # connected and answered
    broker.redis.client_pause(60_000, all=True)  # the test's own server: killed at its end
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        broker.push_one("default", 0, '{"jid":"b"}')
    assert time.monotonic() - started < 10  # its 0.2 s timeout (twice), not the default 30 s
