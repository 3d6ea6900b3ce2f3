"""The fetching role: processor threads take it in turn, and a fetched job runs on the thread
that fetched it."""

import threading

from django_async_jobs.conf import QueueSpec
from django_async_jobs.serialization import decode_payload
from django_async_jobs.worker.fetcher import Fetcher, QueueOrder
from tests.helpers import wait_for
from tests.testapp.jobs import IncrJob


def make_fetcher(broker, concurrency=2, prefetch=None):
    broker.heartbeat("p1", {}, ttl=60)  # only a registered process fetches
    stopping = threading.Event()
    order = QueueOrder(QueueSpec(("default",), (1,), strict=True))
    return Fetcher(broker, "p1", order, concurrency, stopping, prefetch=prefetch)


class Taker(threading.Thread):
    """A processor thread's part: call take() once and keep what it returns."""

    def __init__(self, fetcher):
        super().__init__(daemon=True)
        self.fetcher = fetcher
        self.item = None
        self.returned = threading.Event()

    def run(self):
        self.item = self.fetcher.take()
        self.returned.set()

    def job_id(self):
        return decode_payload(self.item[1])["jid"]


def subscribers(broker):
    """Subscribers of the notify channel, on every server (a cluster's node counts its own)."""
    channel = broker.keys.notify
    return sum(dict(server.pubsub_numsub(channel))[channel.encode()] for server in broker.servers())


def test_an_idle_job_goes_to_the_thread_that_waited_for_it_and_the_role_passes_on(broker):
    fetcher = make_fetcher(broker)
    first = Taker(fetcher)
    first.start()
    wait_for(lambda: subscribers(broker) == 1, 30, "the first thread waiting for ready")
    second = Taker(fetcher)
    second.start()
    job = IncrJob.perform_later("k")
    assert first.returned.wait(30), "the waiting thread did not get the job"
    assert first.job_id() == job.job_id
    assert not second.returned.wait(0.3), "the follower got a job nobody pushed"
    # The follower now leads: the next push is its own.
    later = IncrJob.perform_later("k")
    assert second.returned.wait(30)
    assert second.job_id() == later.job_id
    fetcher.stopping.set()
    fetcher.stop(threads=2, timeout=2)
    wait_for(lambda: subscribers(broker) == 0, 30, "the subscription closed")


def test_a_batch_fills_the_buffer_and_its_jobs_need_no_more_fetches(broker):
    jobs = [IncrJob.perform_later(f"k{i}") for i in range(6)]
    fetcher = make_fetcher(broker, concurrency=2)  # holds up to 2 running + 2 buffered
    taken = [fetcher.take()]
    assert len(broker.inflight("p1")) == 4
    taken += [fetcher.take() for _ in range(3)]  # the rest of the batch, from the buffer
    assert broker.queue_size("default") == 2
    # Two jobs finish; the buffer is empty: the next thread leads, fetching two.
    fetcher.release_slot()
    fetcher.release_slot()
    taken.append(fetcher.take())
    assert broker.queue_size("default") == 0
    assert len(broker.inflight("p1")) == 6
    taken.append(fetcher.take())
    assert [decode_payload(raw)["jid"] for _, raw in taken] == [j.job_id for j in jobs]


def test_a_stop_returns_every_waiting_thread_empty_handed(broker):
    fetcher = make_fetcher(broker, concurrency=3)
    takers = [Taker(fetcher) for _ in range(3)]
    for taker in takers:
        taker.start()
    wait_for(lambda: subscribers(broker) == 1, 30, "one thread waiting for ready")
    fetcher.stopping.set()
    fetcher.stop(threads=3, timeout=2)
    for taker in takers:
        assert taker.returned.wait(30), "a thread kept waiting after the stop"
        assert taker.item is None
    wait_for(lambda: subscribers(broker) == 0, 30, "the subscription closed")
    assert broker.inflight("p1") == {}


def test_jobs_pushed_together_reach_every_idle_thread(broker):
    fetcher = make_fetcher(broker, concurrency=3, prefetch=0)
    takers = [Taker(fetcher) for _ in range(3)]
    for taker in takers:
        taker.start()
    wait_for(lambda: subscribers(broker) == 1, 30, "one thread waiting for ready")
    assert IncrJob.perform_bulk([("a",), ("b",), ("c",)]) == 3
    for taker in takers:
        assert taker.returned.wait(30), "an idle thread did not get one of the jobs"
    assert sorted(decode_payload(t.item[1])["args"][0] for t in takers) == ["a", "b", "c"]
    fetcher.stopping.set()
    fetcher.stop(threads=3, timeout=2)


def test_the_fetch_keeps_one_connection_whichever_thread_leads(private_redis):
    broker = private_redis
    fetcher = make_fetcher(broker, concurrency=3, prefetch=0)
    for i in range(3):
        IncrJob.perform_later(f"k{i}")
        taker = Taker(fetcher)  # a new thread each time, and each one leads
        taker.start()
        assert taker.returned.wait(30) and taker.item is not None
        fetcher.release_slot()
    fetching = [c for c in broker.redis.client_list() if c["cmd"] == "evalsha"]
    assert len(fetching) == 1
    fetcher.stopping.set()
    fetcher.stop(threads=3, timeout=2)
