"""Which queue to take from next, and the thread that moves jobs from Redis to idle threads.

A fetch moves as many jobs as there are idle threads in one Lua call (batch fetch), so a busy
worker pays one round trip for many jobs. An idle fetcher sleeps until a push publishes
"ready", which keeps enqueue-to-start latency at a round trip or two instead of a poll beat.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from django_async_jobs.conf import QueueSpec

logger = logging.getLogger("django_async_jobs.worker")

IDLE_RECHECK = 1.0  # seconds: a missed "ready" message costs at most this much
WAKE_CHECK = 0.2  # seconds: how soon an idle fetcher notices a stop or quiet


class QueueOrder:
    """Strict: always the configured order. Weighted: a random order where a queue of weight 6
    comes first six times as often as one of weight 1 (as Sidekiq), so no queue starves."""

    def __init__(self, spec: QueueSpec) -> None:
        self.names = list(spec.names)
        self.strict = spec.strict or len(spec.names) == 1
        self._expanded = [name for name, weight in zip(spec.names, spec.weights, strict=True) for _ in range(weight)]

    def next(self) -> list[str]:
        if self.strict:
            return self.names
        shuffled = random.sample(self._expanded, len(self._expanded))
        return list(dict.fromkeys(shuffled))


def select_queues(spec: QueueSpec, requested: Sequence[str]) -> QueueSpec:
    """The queues a ``runworker -q name[,weight]`` asks for, keeping configured weights."""
    if not requested:
        return spec
    configured = dict(zip(spec.names, spec.weights, strict=True))
    names: list[str] = []
    weights: list[int] = []
    explicit = False
    for item in requested:
        name, comma, weight = item.partition(",")
        if not name or ":" in name:
            raise ValueError(f"-q {item!r}: a queue name must be non-empty and without ':'.")
        if name in names:
            raise ValueError(f"-q {item!r}: the queue {name!r} is given twice.")
        if comma and not weight:
            raise ValueError(f"-q {item!r}: the weight after the comma must be a positive integer.")
        if weight:
            explicit = True
            if not weight.isdigit() or int(weight) < 1:
                raise ValueError(f"-q {item!r}: the weight after the comma must be a positive integer.")
        names.append(name)
        weights.append(int(weight) if weight else configured.get(name, 1))
    strict = spec.strict and not explicit
    return QueueSpec(tuple(names), tuple(weights), strict=strict)


class Fetcher(threading.Thread):
    def __init__(
        self,
        broker: Any,
        process_id: str,
        order: QueueOrder,
        concurrency: int,
        deliver: Callable[[list[tuple[str, bytes]]], None],
        stopping: threading.Event,
        buffered: Callable[[], int] = lambda: 0,
        prefetch: int | None = None,
    ) -> None:
        super().__init__(name="async-jobs-fetcher", daemon=True)
        self.broker = broker
        self.process_id = process_id
        self.order = order
        # A slot is a job held by this process, running or waiting in the local buffer. Up to
        # ``prefetch`` jobs (default: ``concurrency``) wait there, so a thread that frees up
        # finds its next job at once instead of a round trip later; they are in the in-flight
        # hash like running ones, and handed back first when the process stops.
        self.capacity = concurrency + (concurrency if prefetch is None else prefetch)
        self._free = self.capacity
        self._slots = threading.Condition(threading.Lock())
        self.concurrency = concurrency
        self.buffered = buffered
        self.deliver = deliver
        self.stopping = stopping
        self.wake = threading.Event()

    def release_slot(self, count: int = 1) -> None:
        with self._slots:
            self._free += count
            if self._worth_a_fetch():
                self._slots.notify()  # only then: a wake-up per finished job costs real CPU

    def _worth_a_fetch(self) -> bool:
        # While threads still have buffered jobs there is no hurry: wait until a batch's worth
        # of slots is free, so one fetch moves many jobs instead of one fetch per job.
        return self._free >= self.concurrency or (self._free > 0 and self.buffered() == 0)

    def _take_slots(self) -> int:
        """Wait until a fetch is worth it; take every free slot (0 when stopping)."""
        with self._slots:
            while not self._worth_a_fetch():
                if self.stopping.is_set():
                    return 0
                self._slots.wait(0.5)
            taken, self._free = self._free, 0
            return taken

    def run(self) -> None:
        backoff = 0.1
        waited = False  # the last pass ended in _wait_for_work, which drained the messages
        while not self.stopping.is_set():
            free = self._take_slots()
            if not free:
                break
            self.wake.clear()
            if self._pubsub is not None and not waited:
                try:
                    self._drain_messages()  # a busy fetcher must not let messages pile up
                except (redis.RedisError, OSError):
                    self._unsubscribe()
            waited = False
            if self.stopping.is_set():
                self._give_back(free)
                break
            try:
                items = self.broker.fetch(self.process_id, self.order.next(), free)
                backoff = 0.1
            except redis.RedisError as exc:
                self._give_back(free)
                logger.warning("fetch failed, retrying in %.1fs: %s", backoff, exc)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._give_back(free - len(items))
            if items:
                self.deliver(items)
            if len(items) < free:
                # The queues ran dry: wait for the "ready" that every step adding jobs publishes,
                # rather than a fetch that would find nothing while a processor starts its job.
                self._wait_for_work()
                waited = True
        self._unsubscribe()

    # -- the notify channel --------------------------------------------------------------------
    # The fetcher reads "ready" messages itself: an idle worker's next job is one message and
    # one fetch away, with no thread in between.

    _pubsub: Any = None

    def _wait_for_work(self) -> None:
        """Sleep until a push publishes "ready", a stop or wake, or the periodic recheck."""
        deadline = time.monotonic() + IDLE_RECHECK
        while not self.wake.is_set() and not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                if self._pubsub is None:
                    self._pubsub = self.broker.pubsub()
                    return  # fetch again: a push may have come before the subscription
                if self._pubsub.get_message(timeout=min(remaining, WAKE_CHECK)) is not None:
                    self._drain_messages()  # one fetch answers every message waiting
                    return
            except (redis.RedisError, OSError) as exc:
                logger.warning("notify channel lost, falling back to polling: %s", exc)
                self._unsubscribe()
                self.stopping.wait(min(remaining, WAKE_CHECK))

    def _drain_messages(self) -> None:
        while self._pubsub.get_message(timeout=0) is not None:
            pass

    def _unsubscribe(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except (redis.RedisError, OSError):
                pass
            self._pubsub = None

    def _give_back(self, count: int) -> None:
        if count:
            self.release_slot(count)
