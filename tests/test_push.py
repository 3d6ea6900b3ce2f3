"""One ``perform_later``: three plain commands in one round trip, ordered by time-sorted job ids."""

import os
import socket
import threading
import time

import pytest
import redis
from redis.exceptions import NoScriptError

from django_async_jobs.broker.client import score
from django_async_jobs.serialization import decode_payload, new_job_id
from tests.helpers import fetch, not_on_cluster
from tests.testapp.jobs import IncrJob


def queued_ids(broker, queue="default"):
    return [decode_payload(raw)["jid"] for raw in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


def test_one_perform_later_is_one_round_trip_without_a_script(private_redis):
    broker = private_redis
    IncrJob.perform_later("warm-up")  # the connection's handshake is not the push's
    broker.redis.config_resetstat()
    job = IncrJob.perform_later("k")
    calls = {name: value["calls"] for name, value in broker.redis.info("commandstats").items()}
    calls.pop("cmdstat_config|resetstat")
    assert calls == {"cmdstat_sadd": 1, "cmdstat_zadd": 1, "cmdstat_publish": 1}
    assert queued_ids(broker)[-1] == job.job_id
    assert broker.redis.sismember(broker.keys.queues, "default")


def test_job_ids_sort_in_the_order_they_were_made_and_never_repeat():
    ids = [new_job_id() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)

    made: list[list[str]] = [[] for _ in range(4)]

    def make(out):
        out.extend(new_job_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every)
    assert all(out == sorted(out) for out in made)


def test_job_ids_keep_their_order_when_the_clock_steps_back(monkeypatch):
    first = new_job_id()
    monkeypatch.setattr(time, "time_ns", lambda: 1_000_000_000_000_000)  # 2001
    assert new_job_id() > first


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_makes_ids_of_its_own():
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: ids only, then out without running any cleanup
        os.write(writer, "".join(new_job_id() for _ in range(1000)).encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(pid, 0)
    with os.fdopen(reader) as pipe:
        raw = pipe.read()
    theirs = [raw[i : i + 24] for i in range(0, len(raw), 24)]
    ours = [new_job_id() for _ in range(1000)]
    assert len(theirs) == 1000
    # Without a reseed, the child would go on from the parent's counter and repeat its ids.
    assert {i[12:] for i in theirs}.isdisjoint(i[12:] for i in ours)


def test_single_and_bulk_pushes_share_one_first_in_first_out_order(broker):
    first = IncrJob.perform_later("a")
    bulk = [IncrJob(f"b{i}") for i in range(3)]
    IncrJob.perform_all_later(bulk)
    last = IncrJob.perform_later("c")
    assert queued_ids(broker) == [first.job_id, *(j.job_id for j in bulk), last.job_id]
    fetched = [f.decode().split(":")[0] for f, _ in fetch(broker, "tester", ["default"], 5)]
    assert fetched == [first.job_id, *(j.job_id for j in bulk), last.job_id]


@pytest.mark.parametrize("priority", [-100, -3, 0, 7, 100])
def test_a_job_pushed_from_python_is_scored_as_the_scripts_score_it(broker, priority):
    single = IncrJob.set(priority=priority).perform_later("one")
    pair = [_with_priority(IncrJob("x"), priority), _with_priority(IncrJob("y"), priority)]
    IncrJob.perform_all_later(pair)  # two jobs: the push script's score
    scores = dict(broker.redis.zrange(broker.keys.queue("default"), 0, -1, withscores=True))
    by_id = {decode_payload(raw)["jid"]: value for raw, value in scores.items()}
    assert by_id[single.job_id] == by_id[pair[0].job_id] == by_id[pair[1].job_id] == score(priority)


def _with_priority(job, priority):
    job.priority = priority
    return job


@not_on_cluster("the direct connection path is a single server's")
def test_an_error_reply_reaches_the_caller_and_the_connection_stays_usable(broker):
    broker.redis.set(broker.keys.queue("broken"), "not a sorted set")
    own = broker._command("CLIENT", "ID")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        IncrJob.set(queue="broken").perform_later("k")
    # The replies after the error were read, so the same connection goes on: the next push
    # reads its own reply, not one left over.
    assert broker._command("CLIENT", "ID") == own
    job = IncrJob.perform_later("k")
    assert queued_ids(broker) == [job.job_id]


def test_a_payload_beyond_ascii_arrives_whole(broker):
    # The packet gives each part's length in bytes, not characters.
    text = "Zoë's café, 日本, ✓ " * 50
    job = IncrJob.set(priority=3).perform_later(text)
    (field, raw), = fetch(broker, "tester", ["default"], 1)
    assert decode_payload(raw)["args"] == [text] and field.decode().startswith(job.job_id)


@not_on_cluster("the direct connection path is a single server's")
def test_a_lost_connection_is_retried_once_on_a_fresh_one(broker):
    IncrJob.perform_later("warm-up")
    own = broker._command("CLIENT", "ID")  # the push's connection
    assert broker.redis.client_kill_filter(_id=own) == 1  # as a Redis restart or a proxy would
    job = IncrJob.perform_later("after")
    assert queued_ids(broker)[-1] == job.job_id


@not_on_cluster("the direct connection path is a single server's")
def test_the_redis_py_internals_of_the_fast_path_are_there(broker):
    """``push_one`` and ``_command`` talk to redis-py's connection below its public API
    (``Broker._line_replies`` reads the socket itself). A redis-py release that renames what
    they use must fail here, by name, instead of misbehaving at enqueue: pyproject.toml bounds
    redis-py to the versions CI tests, and this test is what to run before raising the bound."""
    where = f"redis-py {redis.__version__}: Broker._line_replies / push_one rely on"
    assert broker._direct, f"{where} a plain redis.Redis on a redis.ConnectionPool (the fast path is off)"
    conn = broker.own_connection()
    for name in ("_sock", "_parser", "pid", "connect", "disconnect", "pack_command", "send_packed_command",
                 "send_command", "read_response"):
        assert hasattr(conn, name), f"{where} Connection.{name}, which {type(conn).__name__} no longer has"
    assert conn._sock is None and conn.pid == os.getpid(), f"{where} Connection._sock being None until connect()"
    conn.connect()
    try:
        assert isinstance(conn._sock, socket.socket), f"{where} Connection._sock being the socket once connected"
        error = conn._parser.parse_error("WRONGTYPE Operation against a key holding the wrong kind of value")
        assert type(error) is redis.ResponseError and "WRONGTYPE" in str(error), f"{where} _parser.parse_error"
        assert isinstance(conn._parser.parse_error("NOSCRIPT No matching script."), NoScriptError), (
            f"{where} _parser.parse_error mapping error replies to redis-py's exception classes"
        )
    finally:
        conn.disconnect()
