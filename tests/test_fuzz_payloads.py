"""Generated payloads written straight into a queue, the schedule and the retry set, through one
real in-process worker on real Redis: every job ends (runs, is retried, or is dead with a reason
and becomes a row), none stays in flight, and the worker's threads live on.

``FUZZ_EXAMPLES`` sets how many batches are tried (300 by default; ``make fuzz`` runs 5,000).
"""

import json
import logging
import os
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_async_jobs.conf import QueueSpec
from django_async_jobs.locks import MODES
from django_async_jobs.models import DeadJob, DeathReason
from django_async_jobs.serialization import TAG
from django_async_jobs.worker import dead_writer
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp import poison_jobs

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
JOBS = [f"{poison_jobs.__name__}.{name}" for name in (
    "PoisonOkJob", "PoisonOneArgJob", "PoisonFailJob", "PoisonRuleJob", "PoisonTaggedJob", "PoisonAsyncJob",
    "PoisonUniqueJob",
)]


class Raw:
    """JSON text written as it is: what ``json.dumps`` would refuse or never write."""

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:60]!r}{'...' if len(self.text) > 60 else ''})"


def dump(value) -> bytes:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return b"{" + b",".join(dump(k) + b":" + dump(v) for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def ordered(data: dict, rnd, shuffle: bool) -> bytes:
    """A job's payload; as the library writes them, the id first, unless ``shuffle``."""
    items = list(data.items())
    if shuffle:
        rnd.shuffle(items)
    return dump(dict(items))


def deep(depth: int) -> Raw:
    return Raw(b"[" * depth + b"]" * depth)


def mostly(usual: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` nine times in ten: most payloads must get past the checks to reach the paths
    behind them (running, retrying, the retry rules), not stop at "malformed"."""
    return st.integers(0, 9).flatmap(lambda n: usual if n else other)


odd_numbers = st.sampled_from([
    b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1e-999", b"-0", b"1" * 5000, b"-1" + b"0" * 40,
]).map(Raw)
odd_strings = st.sampled_from([
    b'"\\ud800"', b'"\\udfff\\ud800"', b'"\xff\xfe"', b'"\xc3"', b'"a\\u0000b"',
]).map(Raw) | st.just(100_000).map(lambda n: Raw(b'"' + b"a" * n + b'"'))
nesting = st.sampled_from([2, 50, 500, 990, 1500, 100_000]).map(deep)
odd = odd_numbers | odd_strings | nesting
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
json_values = st.recursive(
    mostly(scalars, odd),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)
# Tag-shaped objects: the tagged arguments' encoding, with values right, wrong or absurd.
tags = st.sampled_from(["datetime", "date", "time", "timedelta", "decimal", "uuid", "dict", "nope"])
tag_values = st.sampled_from([
    "2024-01-01T00:00:00", "2024-01-01", "12:00", "1.5", "x", "NaN", "sNaN", "1e999999",
    "00000000-0000-0000-0000-000000000000",
]) | st.lists(st.integers() | st.sampled_from([10**10, -10**10, 10**20]), max_size=4) | json_values
tagged_values = st.fixed_dictionaries(
    {TAG: mostly(tags, json_values)},
    optional={"v": tag_values, "tz": st.sampled_from(["UTC", "Nowhere/Atlantis", "a" * 300, "../x"]) | json_values,
              "off": st.lists(st.integers(), max_size=3) | json_values, "fold": json_values},
)
arguments = st.recursive(
    mostly(scalars | tagged_values, odd),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)
counts = mostly(st.integers(0, 30), st.integers(-3, -1) | json_values)


def payloads(prefix: str) -> st.SearchStrategy[bytes]:
    locks = st.fixed_dictionaries({}, optional={
        "mode": mostly(st.sampled_from(MODES), json_values),
        "key": mostly(st.text(max_size=5).map(lambda s: f"{prefix}:fuzz-lock:{s}"), json_values),
        "run": mostly(st.text(max_size=5).map(lambda s: f"{prefix}:fuzz-run:{s}"), json_values),
    })
    extra_fields = {
        "kwargs": mostly(st.dictionaries(st.text(max_size=4), arguments, max_size=2), json_values),
        "tagged": mostly(st.just(1), json_values),
        "retry_count": counts,
        "retries": mostly(st.dictionaries(st.just("builtins.ValueError") | st.text(max_size=4), counts, max_size=2), json_values),
        "executions": counts,
        "priority": mostly(st.integers(-200, 200), json_values),
        "at": st.floats() | json_values,
        "enqueued_at": st.floats() | json_values,
        "lock": mostly(locks, json_values),
        "cron": mostly(st.fixed_dictionaries({"name": st.text(max_size=4)}), json_values),
        "error_class": json_values,
        "error_message": json_values,
    }
    base = st.fixed_dictionaries({
        "jid": mostly(st.text("0123456789abcdef", min_size=1, max_size=24), st.text(max_size=6) | odd_strings | json_values),
        "job": mostly(st.sampled_from(JOBS), st.just("tests.Nowhere") | st.text(max_size=6) | json_values),
        "queue": mostly(st.just("default"), st.just("fuzz-other") | st.text(max_size=4) | json_values),
        "args": mostly(st.lists(arguments, max_size=3), json_values),
    })
    extras = st.lists(st.sampled_from(sorted(extra_fields)), max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: extra_fields[name] for name in names})
    )
    fields = st.builds(lambda base, extra: {**base, **extra}, base, extras)
    jobs = st.builds(ordered, fields, st.randoms(use_true_random=False), st.integers(0, 4).map(lambda n: n == 0))
    return mostly(jobs, st.binary(max_size=40) | json_values.map(dump) | nesting.map(dump))


def alive(worker) -> bool:
    threads = [*worker.processors, worker.acker, worker.poller, worker.heart, worker.dead_writer]
    loop = worker.event_loop._thread
    return all(t.is_alive() for t in threads) and (loop is None or loop.is_alive())


@pytest.mark.django_db(transaction=True)
def test_every_generated_payload_ends(broker, prefix, monkeypatch, caplog):
    monkeypatch.setattr(dead_writer, "INTERVAL", 0.1)
    # Most batches log an error per dead job: pytest would keep every record of a long run.
    caplog.set_level(logging.CRITICAL, logger="django_async_jobs")
    keys = broker.keys
    inflight = None
    outcome: Counter = Counter()
    runs_before = Counter(poison_jobs.runs)

    def settled() -> bool:
        broker.poll()  # what comes due (a rule's wait=0 retry), as the worker's poller would
        now = time.time()
        with broker.redis.pipeline(transaction=False) as pipe:
            pipe.hlen(inflight)
            pipe.zcard(keys.queue("default"))
            pipe.zcount(keys.schedule, "-inf", now)
            pipe.zcount(keys.retry, "-inf", now)
            return not any(pipe.execute())

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(["queue", "schedule", "retry"]), payloads(prefix)), min_size=1, max_size=3))
    def every_job_ends(batch):
        due = time.time() - 1
        ready = []
        for target, payload in batch:
            if target == "queue":
                ready += ["default", 0, payload]
            else:
                broker.redis.zadd(keys.schedule if target == "schedule" else keys.retry, {payload: due})
        if ready:
            broker.push_routed(ready)
        wait_for(settled, 20, f"every job of the batch ({', '.join(target for target, _ in batch)}) ended")
        assert alive(worker)
        # What is left is not due: retries to come, and jobs routed to a queue nobody serves.
        outcome["retried"] += broker.redis.zcard(keys.retry)
        other = [keys.queue_base.encode() + name for name in broker.redis.smembers(keys.queues) if name != b"default"]
        outcome["in other queues"] += sum(broker.redis.zcard(key) for key in other)
        broker.redis.delete(keys.retry, keys.schedule, *other)

    # One queue, so fetching draws nothing from `random` while Hypothesis generates a batch.
    worker = Worker(queues=QueueSpec(("default",), (1,), strict=True))
    worker.start()
    inflight = keys.inflight(worker.process_id)
    try:
        every_job_ends()
        # The dead writer turns every staged record into a row, whatever it holds.
        wait_for(lambda: broker.redis.hlen(keys.dead) == 0, 30, "every dead job written")
        assert alive(worker)
    finally:
        worker.stop(timeout=2)

    reasons = Counter(DeadJob.objects.values_list("reason", flat=True))
    assert set(reasons) <= set(DeathReason.values)
    runs = Counter(poison_jobs.runs)
    runs.subtract(runs_before)
    print(f"\n{EXAMPLES} batches: runs {dict(+runs)}, dead {dict(reasons)}, {dict(outcome)}")
    if EXAMPLES >= 300:  # the generated payloads reach the interesting paths, not only "malformed"
        assert min(runs[name] for name in ("ok", "fail", "rule", "tagged", "async", "unique")) > 0, runs
        assert {"malformed_payload", "unknown_class", "arguments_mismatch", "worker_error", "retries_exhausted"} <= set(reasons)
        assert outcome["retried"] > 0
