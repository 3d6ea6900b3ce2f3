"""Flow control measured on real worker processes (2 processes x 10 threads): a window limit
of 10 a second lets 100 jobs through in about 10 s with never more than 10 in one wall-clock
second, and a concurrency limit of 2 never has 3 jobs running at once. The limits are asserted;
the times are printed (``pytest -s``), since the machine running the suite may be loaded."""

import time
from collections import Counter

from tests.helpers import wait_for
from tests.testapp.flow_jobs import AccountJob, WindowLimitedJob

WORKERS = ("--processes", "2", "-c", "10")


def test_a_window_of_10_a_second_over_100_jobs(broker, prefix, spawn):
    key = f"{prefix}:admitted"
    for _ in range(100):
        WindowLimitedJob.perform_later(key)
    spawn(*WORKERS)
    records = wait_for(lambda: (r := broker.redis.lrange(key, 0, -1)) and len(r) >= 100 and r, 180, "100 jobs let in")
    calls = [tuple(int(v) for v in record.split()) for record in records]
    # Each call was let in between the two times its job read from Redis: where both fall in one
    # second, that second is certain; a call whose reads straddle a boundary counts in neither.
    certain = Counter(before // 1000 for before, after in calls if before // 1000 == after // 1000)
    assert len(calls) == 100 and max(certain.values()) <= 10, sorted(certain.items())
    straddling = sum(1 for before, after in calls if before // 1000 != after // 1000)
    first, last = min(a for _, a in calls), max(a for _, a in calls)
    seconds = (last - first) / 1000
    # 100 calls at 10 per wall-clock second span at least 9 boundaries: over 8 s whatever the load.
    assert seconds > 8
    print(f"\nwindow(10/s), 2 processes x 10 threads: 100 jobs let in over {seconds:.1f} s, "
          f"at most {max(certain.values())} in a second ({straddling} calls straddled a second)")


def test_a_concurrency_limit_of_2_over_60_jobs(broker, prefix, spawn):
    key = f"{prefix}:cc"
    started = time.monotonic()
    for _ in range(60):
        AccountJob.perform_later("one-account", key, 0.05)
    spawn(*WORKERS)
    wait_for(lambda: broker.redis.llen(f"{key}:done") == 60, 180, "60 jobs done")
    seen = Counter(int(v) for v in broker.redis.lrange(f"{key}:seen", 0, -1))
    assert sum(seen.values()) == 60 and max(seen) <= 2, seen
    print(f"\nlimit_concurrency(to=2), 2 processes x 10 threads: 60 jobs in {time.monotonic() - started:.1f} s "
          f"(worker start included); running at once when each started: {dict(sorted(seen.items()))}")
