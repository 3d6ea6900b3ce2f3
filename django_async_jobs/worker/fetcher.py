"""Which queue to take from next, and how a worker's threads get jobs from Redis.

A fetch moves as many jobs as there are free slots in one Lua call (batch fetch), so a busy
worker pays one round trip for many jobs. An idle worker's fetching thread sleeps until a push
publishes "ready", which keeps enqueue-to-start latency at a round trip instead of a poll beat.

A fetch whose reply is lost strands nothing. The script can run while its reply never arrives:
Redis frozen past the reply timeout (``DEBUG SLEEP``, SIGSTOP) runs the command when it wakes,
a dropped connection loses the reply, and the client sends the command again on a new
connection, so two copies may run, in either order, even after a later fetch. Each fetch
therefore carries an attempt number and the number of the last attempt whose reply came back;
the script records the last attempt it ran with the fields it returned (``p:fetched:<id>``).
A late copy of an older attempt moves nothing, a copy of the recorded one returns the same
jobs, and a newer attempt first returns the recorded jobs when their reply never came back.
Every job a fetch moves is thus either in a reply the process read or in the record the next
fetch returns: nothing depends on timing, and the hot path keeps its one round trip (the
script does three more constant-time commands per fetch and nothing more per job). A process
that is stopping or quiet and still owes such an attempt makes one more fetch of no new jobs
to take them back. Only a registered process fetches, so a copy that runs after the process
stopped or was taken for dead cannot put jobs where nobody would recover them.

In a cluster with ``CLUSTER_PARTITIONS`` over 1, the queues are spread over several slots, and
no one command waits on keys of several slots: the role fetches from one partition after the
other (a ``Lane`` each, with its own connection and attempt numbers), passes over those whose
last fetch came back short, and waits for "ready" only once every partition did. An idle
worker thus sends one fetch per partition per ``IDLE_RECHECK``.

The other design, comparing the in-flight hash with what the process holds at each heartbeat,
cannot tell a stranded job from one whose fetch reply, settlement or hand-over to the event
loop is on its way: it would need to stop every thread that moves jobs at each beat, and a late
copy of a fetch that runs after the comparison strands jobs again until the next one.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from django_async_jobs.conf import QUEUE_NAME_RULE, QueueSpec, valid_queue_name
from django_async_jobs.worker.logs import log_failure

logger = logging.getLogger("django_async_jobs.worker")

IDLE_RECHECK = 1.0  # seconds: a missed "ready" message costs at most this much
WAKE_CHECK = 0.2  # seconds: how soon a waiting fetch notices a stop or quiet
PAUSED_RECHECK = 1.0  # seconds: how soon a paused (or resumed) queue is skipped (or fetched again)


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
        if not valid_queue_name(name):
            raise ValueError(f"-q {item!r}: {name!r} is not a valid queue name: use {QUEUE_NAME_RULE}.")
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


LEAD = object()  # the fetching role, passed between threads through the buffer


class Lane:
    """The fetching of one partition (``Broker.partitions``): its connection, the numbers of
    its last attempt and of the last whose reply came back, and whether it came back short."""

    __slots__ = ("broker", "connection", "attempt", "received", "dry")

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.connection = broker.own_connection()  # the role's, whichever thread leads
        self.attempt = 0
        self.received = 0
        self.dry = False

    @property
    def owed(self) -> bool:
        return self.attempt > self.received


class Fetcher:
    """The jobs a process holds, and the fetching role its processor threads take in turn.

    Leader/follower: the role is a token in the buffer of fetched jobs, behind any jobs in it.
    The thread that takes it fetches; when the queues are dry it waits for "ready" itself, so
    the job its fetch brings runs on the same thread: between a push and the job's start there
    are the message and the fetch's reply, and no hand-off to another thread. The rest of a
    batch goes into the buffer for the other threads, then the token for the next idle one.
    """

    def __init__(
        self,
        broker: Any,
        process_id: str,
        order: QueueOrder,
        concurrency: int,
        stopping: threading.Event,
        prefetch: int | None = None,
    ) -> None:
        self.broker = broker
        self.process_id = process_id
        self.order = order
        # A slot is a job held by this process, running or waiting in the buffer. Up to
        # ``prefetch`` jobs (default: ``concurrency``) wait there, so a thread that frees up
        # finds its next job at once instead of a round trip later; they are in the in-flight
        # hash like running ones, and handed back first when the process stops.
        self.capacity = concurrency + (concurrency if prefetch is None else prefetch)
        self.stopping = stopping
        self._held = 0
        self._held_lock = threading.Lock()
        self._buffer: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._buffer.put(LEAD)
        self._fetching = threading.Lock()  # held by the leader while it fetches
        self._lanes = [Lane(part) for part in broker.partitions]
        self._turn = 0  # the lane the next fetch tries first
        # Where each fetched job is, for what the process does to it later (Partitioned).
        self._hold = broker.hold if len(self._lanes) > 1 else None
        self._backoff = 0.1
        self._pubsub: Any = None
        self._closed = threading.Event()  # stop() ran: not even a fetch of no new jobs any more
        # Paused queues (``api.pause_queue``), read at most once a second in a call of its own,
        # so a fetch neither waits for nor carries anything more; between reads, a fetch that
        # finds none paused only compares two floats.
        self._paused: frozenset[str] = frozenset()
        self._paused_read_at = -PAUSED_RECHECK

    def take(self) -> tuple[str, bytes] | None:
        """The calling thread's next job, fetched by itself if it takes the role; None once
        ``stop()`` has run and the buffer is empty."""
        while True:
            item = self._buffer.get()
            if item is not LEAD:
                return item
            if self.stopping.is_set() and not self.owed:
                continue  # the role ends with the process: nobody fetches any more
            items: list[tuple[str, bytes]] = []
            try:
                with self._fetching:
                    items = self._lead()
            finally:
                for extra in items[1:]:
                    self._buffer.put(extra)
                self._buffer.put(LEAD)  # never lost, or nobody would fetch again
            if items:
                return items[0]

    @property
    def owed(self) -> bool:
        """An attempt's reply never came back: its jobs may be in our hash and in no thread."""
        return any(lane.owed for lane in self._lanes)

    @property
    def _dry(self) -> bool:
        """Every partition's last fetch came back short: wait for "ready" before the next."""
        for lane in self._lanes:
            if not lane.dry:
                return False
        return True

    def release_slot(self) -> None:
        """A thread is done with its job: settled, handed back or passed to the event loop."""
        with self._held_lock:
            self._held -= 1

    def stop(self, threads: int, timeout: float) -> None:
        """Wait up to ``timeout`` for a fetch in progress to land, drop the subscription, and
        make ``take()`` return None to each of ``threads`` threads once the buffer is empty."""
        self._closed.set()
        if self._fetching.acquire(timeout=timeout):
            self._unsubscribe()
            for lane in self._lanes:
                if lane.connection is not None:
                    lane.connection.disconnect()
            self._fetching.release()
        for _ in range(threads):
            self._buffer.put(None)

    def unstarted(self) -> list[str]:
        """Take the jobs still waiting in the buffer out of it: the fields of jobs no thread
        started, which a stopping process hands back as they were."""
        fields = []
        while True:
            try:
                item = self._buffer.get_nowait()
            except queue.Empty:
                return fields
            if item is not LEAD and item is not None:
                fields.append(item[0])

    def _lead(self) -> list[tuple[str, bytes]]:
        """Fetch until at least one job comes; once the process is stopping, only the jobs an
        attempt whose reply was lost left in our hash (they go back with the buffer)."""
        while not self.stopping.is_set():
            if self._dry:
                # The queues ran dry: wait for the "ready" that every step adding jobs
                # publishes, rather than a fetch that would find nothing.
                self._wait_for_work()
                for lane in self._lanes:
                    lane.dry = False
                if self.stopping.is_set():
                    break
            elif self._pubsub is not None:
                try:
                    self._drain_messages()  # a busy process must not let messages pile up
                except Exception:  # a client bug too: the channel is made again when next needed
                    self._unsubscribe()
            items = self._fetch(self._next_lane(), new=True)
            if items:
                return items
        while not self._closed.is_set():
            lane = next((lane for lane in self._lanes if lane.owed), None)
            if lane is None:
                break
            items = self._fetch(lane, new=False)
            if items:
                return items
        return []

    def _next_lane(self) -> Lane:
        """The next partition in turn whose last fetch did not come back short."""
        lanes = self._lanes
        if len(lanes) == 1:
            return lanes[0]
        for step in range(len(lanes)):
            index = (self._turn + step) % len(lanes)
            if not lanes[index].dry:
                self._turn = index + 1
                return lanes[index]
        return lanes[0]  # not reached: _lead waits while every lane is dry

    def _fetch(self, lane: Lane, new: bool) -> list[tuple[str, bytes]]:
        """One attempt: jobs for every free slot (``new``), or only those a lost reply owes us.
        The jobs an earlier attempt owes us come first and may exceed the free slots."""
        queues = self.order.next()
        if time.monotonic() - self._paused_read_at >= PAUSED_RECHECK:
            self._read_paused()
        if self._paused:
            queues = [name for name in queues if name not in self._paused]
            if not queues and new:  # every queue of ours is paused: wait as for empty ones
                for each in self._lanes:
                    each.dry = True
                return []
        with self._held_lock:
            free = self.capacity - self._held if new else 0
            self._held += free
        lane.attempt += 1
        items: list[tuple[bytes, bytes]] = []
        try:
            items = lane.broker.fetch(
                self.process_id, queues, free, lane.connection,
                attempt=lane.attempt, received=lane.received,
            )
            lane.received = lane.attempt
            lane.dry = len(items) < free
            self._backoff = 0.1
        except Exception as exc:  # a client bug too must not end the thread: the attempt stays owed
            log_failure(logger, exc, "fetch failed, retrying in %.1fs", self._backoff)
            # Once stopping, only stop() ends the wait: a quiet process still owes the attempt.
            (self._closed if self.stopping.is_set() else self.stopping).wait(self._backoff)
            self._backoff = min(self._backoff * 2, 5.0)
            lane.dry = False
        finally:
            with self._held_lock:
                self._held -= free - len(items)
        fetched = [(field.decode(), raw) for field, raw in items]
        if self._hold is not None and fetched:
            self._hold(lane.broker, [field for field, _ in fetched])
        return fetched

    def _read_paused(self) -> None:
        self._paused_read_at = time.monotonic()
        try:
            self._paused = frozenset(self.broker.paused_queues())
        except Exception as exc:  # the fetch that follows meets the same trouble and backs off
            log_failure(logger, exc, "reading the paused queues failed, keeping the last set")

    # -- the notify channel --------------------------------------------------------------------

    def _wait_for_work(self) -> None:
        """Sleep until a push publishes "ready", a stop, or the periodic recheck."""
        deadline = time.monotonic() + IDLE_RECHECK
        while not self.stopping.is_set():
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
            except Exception as exc:  # a client bug too must not end the thread that leads
                log_failure(logger, exc, "notify channel lost, falling back to polling")
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
