"""Rate limiters (window, bucket, leaky, concurrent) on real Redis, each call one Lua step, and
what a worker does with a job over the limit: put it back with a backoff, not a failure, until
``max_limited``."""

import json
import math
import threading
import time
from datetime import timedelta

import pytest

from django_async_jobs import ApplicationJob, OverLimit, RateLimit, signals
from django_async_jobs.flow import MAX_SPREAD
from tests.helpers import wait_for
from tests.testapp.flow_jobs import NeverLimitedTwiceJob, OnePerSecondJob


def redis_ms(broker):
    seconds, micros = broker.redis.time()
    return seconds * 1000 + micros // 1000


def calls(limiter, n):
    """Try ``n`` calls at once; the OverLimit of each refused one (None for an allowed one)."""
    out = []
    for _ in range(n):
        try:
            with limiter.within_limit():
                out.append(None)
        except OverLimit as exc:
            out.append(exc)
    return out


def test_window_allows_n_per_clock_window(broker):
    limiter = RateLimit.window("w", 5, per=timedelta(seconds=2))
    for _ in range(5):  # a window may end during a try; the next try starts in a fresh one
        window = redis_ms(broker) // 2000
        broker.redis.delete(limiter.key)
        results = calls(limiter, 7)
        if redis_ms(broker) // 2000 == window:
            break
    else:
        pytest.fail("no try fitted in one window")
    assert results[:5] == [None] * 5
    refused = results[5:]
    assert all(isinstance(exc, OverLimit) and exc.limiter is limiter for exc in refused)
    assert all(0 < exc.wait <= 2.0 for exc in refused)
    # The wait is what is left of this window: the limit allows again when the next one starts.
    end = (window + 1) * 2000
    assert abs(refused[0].wait * 1000 - (end - redis_ms(broker))) < 500


def test_bucket_bursts_n_then_refills_at_n_per_period(broker):
    limiter = RateLimit.bucket("b", 3, per=30)
    results = calls(limiter, 4)
    assert results[:3] == [None] * 3
    assert 9.5 < results[3].wait <= 10.0  # one token takes 30 / 3 s to come back
    # As 20 s later: two tokens are back, not three.
    at = float(broker.redis.hget(limiter.key, "at"))
    broker.redis.hset(limiter.key, "at", at - 20_000)
    assert [r is None for r in calls(limiter, 3)] == [True, True, False]


def test_leaky_spaces_calls_evenly_with_no_burst(broker):
    limiter = RateLimit.leaky("l", 2, per=20)  # one call every 10 s
    results = calls(limiter, 3)
    assert results[0] is None and all(isinstance(r, OverLimit) for r in results[1:])
    assert 9.0 < results[1].wait <= 10.0
    broker.redis.set(limiter.key, redis_ms(broker) - 1)  # as if those 10 s went by
    assert [r is None for r in calls(limiter, 2)] == [True, False]


def test_concurrent_holds_n_at_once_and_frees_on_exit(broker):
    limiter = RateLimit.concurrent("c", 2)
    with limiter.within_limit(), limiter.within_limit():
        assert broker.redis.zcard(limiter.key) == 2
        [refused] = calls(limiter, 1)
        assert isinstance(refused, OverLimit) and refused.wait == 0
    assert broker.redis.zcard(limiter.key) == 0
    with pytest.raises(RuntimeError), limiter.within_limit():
        raise RuntimeError("the block failed")
    assert broker.redis.zcard(limiter.key) == 0  # freed all the same


def test_a_concurrent_lock_that_is_never_released_times_out(broker):
    limiter = RateLimit.concurrent("c", 1, lock_timeout=0.3)
    limiter._take()  # a caller that died holding it
    assert isinstance(calls(limiter, 1)[0], OverLimit)
    wait_for(lambda: calls(limiter, 1) == [None], 10, "the lock to time out")


def test_wait_timeout_waits_in_the_thread_when_the_limit_allows_soon(broker):
    limiter = RateLimit.window("wt", 1, per=1, wait_timeout=3)
    assert calls(limiter, 2) == [None, None]  # the second waited for the next second
    concurrent = RateLimit.concurrent("ct", 1, wait_timeout=5)
    first = concurrent._take()
    threading.Timer(0.3, lambda: broker.rate_unlock(concurrent.key, first)).start()
    assert calls(concurrent, 1) == [None]


def test_every_process_and_host_shares_the_limit(broker):
    """Twenty threads at once, each its own connection, on one window: never more than n."""
    limiter = RateLimit.window("shared", 5, per=3600)
    results = []
    threads = [threading.Thread(target=lambda: results.extend(calls(limiter, 3))) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(r is None for r in results) == 5 and len(results) == 60


def test_in_the_test_modes_nothing_is_limited(settings, broker):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "MODE": "test"}
    limiter = RateLimit.window("tm", 1)
    assert calls(limiter, 3) == [None] * 3
    assert not broker.redis.exists(limiter.key)


@pytest.mark.parametrize("build, error", [
    (lambda: RateLimit.window("has space", 1), "name"),
    (lambda: RateLimit.window("x", 0), "count"),
    (lambda: RateLimit.window("x", True), "count"),
    (lambda: RateLimit.bucket("x", 1, per=0), "per"),
    (lambda: RateLimit.leaky("x", 1, per="1s"), "per"),
    (lambda: RateLimit.concurrent("x", 1, lock_timeout=-1), "lock_timeout"),
    (lambda: RateLimit.window("x", 1, wait_timeout=-1), "wait_timeout"),
])
def test_bad_limiters_are_refused_naming_the_argument(build, error):
    with pytest.raises((TypeError, ValueError), match=error):
        build()


def test_a_limiter_is_cheap_to_build_and_says_what_it_is(broker):
    limiter = RateLimit.window(f"account-{42}", 10, per=timedelta(minutes=1))
    assert repr(limiter) == "RateLimit.window('account-42', 10, per=60s)"
    assert not broker.redis.exists(limiter.key)  # nothing in Redis until a call


# -- the backoff ---------------------------------------------------------------------------------


class Job(ApplicationJob):
    def perform(self):
        ...


def test_the_backoff_is_the_limiters_wait_plus_growing_jitter():
    limiter = RateLimit.window("bo", 10, per=2)
    job = Job()
    job.payload = {}
    delays = []
    for times in range(1, 6):
        exc = OverLimit(limiter, 0.5)
        assert exc.prepare(job) is None
        assert exc.changes["limited"]["times"] == times
        assert 0.5 <= exc.delay <= 0.5 + 2 * math.sqrt(times)
        delays.append(exc.delay)
        job.payload = {**job.payload, **exc.changes}
    since = job.payload["limited"]["since"]
    assert abs(since - time.time()) < 5  # the first time it was limited, kept since
    hourly = OverLimit(RateLimit.window("h", 1, per=timedelta(days=1)), 10.0)
    hourly.prepare(job)
    assert hourly.delay <= 10.0 + MAX_SPREAD * math.sqrt(6)


def test_a_limited_field_that_is_not_ours_starts_afresh():
    job = Job()
    for bad in ("x", {"times": -1, "since": 1.0}, {"times": 2, "since": "yesterday"}, {"times": 1.5, "since": 1},
                {"times": 1, "since": float("nan")}, {"times": 1, "since": time.time() + 1e6}, [1, 2]):
        job.payload = {"limited": bad}
        exc = OverLimit(RateLimit.window("x", 1), 0.1)
        assert exc.prepare(job) is None and exc.changes["limited"]["times"] == 1


def test_past_max_limited_the_over_limit_is_the_failure():
    job = Job()
    job.payload = {"limited": {"times": 40, "since": time.time() - 86401}}  # a day and a second
    exc = OverLimit(RateLimit.window("x", 1), 0.1)
    assert exc.prepare(job) is exc


# -- in a worker ---------------------------------------------------------------------------------


@pytest.fixture
def key(prefix):
    return f"{prefix}:out"


def test_a_limited_job_is_put_back_not_failed(broker, key, worker, settings):
    handled, failed, succeeded = [], [], []
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "ERROR_HANDLERS": [lambda payload, exc: handled.append(exc)]}
    receivers = [(signals.job_failed, lambda sender, **kw: failed.append(kw)),
                 (signals.job_succeeded, lambda sender, job, **kw: succeeded.append(job.job_id))]
    for signal, receiver in receivers:
        signal.connect(receiver, weak=False)
    try:
        jobs = [OnePerSecondJob.perform_later(key) for _ in range(3)]
        wait_for(lambda: sum(v.startswith(b"ran") for v in broker.redis.lrange(key, 0, -1)) == 3, 60, "three runs")
        wait_for(lambda: broker.inflight(worker.process_id) == {}, 10, "settled")
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)
    values = [v.decode() for v in broker.redis.lrange(key, 0, -1)]
    tries = sum(v.startswith("try") for v in values)
    assert tries > 3  # at least two of them were over the limit at first
    assert (handled, failed) == ([], [])
    assert sorted(succeeded) == sorted(j.job_id for j in jobs)  # once each: the runs that got in
    assert (broker.stat("processed"), broker.stat("failed")) == (3, 0)
    assert broker.redis.zcard(broker.keys.retry) == 0


def test_a_job_put_back_carries_how_often_and_since_when(broker, key):
    OnePerSecondJob.perform_later(key)
    OnePerSecondJob.perform_later(key)
    from django_async_jobs.worker.launcher import Worker

    worker = Worker(concurrency=1)
    worker.start()
    try:
        [member] = wait_for(lambda: broker.redis.zrange(broker.keys.schedule, 0, -1), 30, "a job put back")
    finally:
        worker.stop(timeout=2)
    limited = json.loads(member)["limited"]
    assert limited["times"] == 1 and abs(limited["since"] - time.time()) < 30


def test_past_max_limited_a_job_fails_by_its_rules(broker, key, worker):
    with RateLimit.window("tests-one-per-second", 1, per=1).within_limit():  # the limit is used up
        job = NeverLimitedTwiceJob.perform_later(key)
        wait_for(lambda: broker.redis.hlen(broker.keys.dead) == 1, 30, "the dead record")
    record = json.loads(next(iter(broker.redis.hvals(broker.keys.dead))))
    assert record["job_id"] == job.job_id and record["error_class"] == "django_async_jobs.flow.OverLimit"
    assert "over the limit of RateLimit.window('tests-one-per-second', 1, per=1s)" in record["error_message"]
