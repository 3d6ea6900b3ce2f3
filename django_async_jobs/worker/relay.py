"""The outbox relay: pushes committed outbox rows to Redis, in every worker process.

One thread per database in ``OUTBOX_DATABASES``, started when the outbox is in use. One
process at a time relays a database: the one holding its lease in Redis, which every relay
step renews; a process that dies stops renewing, and another takes over once the lease ends
(three heartbeat intervals). The others only try to take the lease now and then.

A round reads the oldest committed rows (``outbox.BATCH``), pushes them in one Redis round
trip (``relay.lua``, which records each job id and skips ids it has recorded, refusing to act
for a relay that lost its lease), then deletes the rows. The ids of deleted rows are forgotten
in the next round's step. So a relay killed between its push and its delete leaves ids that
make the next relay skip those rows and only delete them: no job runs twice; and rows whose
delete failed stay until a delete succeeds, their ids kept meanwhile.

Between rounds it waits for rows: on PostgreSQL with psycopg 3.2+, on ``LISTEN`` (the
outbox's insert trigger notifies when the inserting transaction commits), on a connection of
its own; elsewhere ``OUTBOX_POLL_INTERVAL``. A database or Redis out of reach makes it back
off (up to ``MAX_BACKOFF``) and resume; the rows wait in the database meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from django.db import DatabaseError, connections

from django_async_jobs import outbox
from django_async_jobs.conf import Settings
from django_async_jobs.models import OUTBOX_CHANNEL

try:
    import psycopg
    from psycopg import sql

    # notifies(timeout=...) came with psycopg 3.2; older ones poll.
    _LISTENS = tuple(int(part) for part in psycopg.__version__.split(".")[:2]) >= (3, 2)
except ImportError:  # pragma: no cover - no psycopg 3: every database is polled
    psycopg = None
    _LISTENS = False

logger = logging.getLogger("django_async_jobs.worker")

MAX_BACKOFF = 5.0
LISTEN_SLICE = 0.5  # seconds per wait for a notification, so a stop is seen soon
LISTEN_RETRY = 30.0  # seconds of polling after listening failed, before trying again
STOP_TIMEOUT = 5.0  # seconds a stopping worker waits for its relays' last delete


class Relay(threading.Thread):
    def __init__(self, broker: Any, alias: str, settings: Settings, stopped: threading.Event, owner: str) -> None:
        super().__init__(name=f"async-jobs-relay-{alias}", daemon=True)
        self.broker = broker
        self.alias = alias
        self.stopped = stopped
        self.holder = f"{owner}:relay"
        self.poll_interval = settings.outbox_poll_interval
        self.lease = max(1.0, 3 * settings.heartbeat_interval)
        self.lease_ms = int(self.lease * 1000)
        self.holding = False
        self.forget: list[str] = []  # ids whose rows are deleted, for the next relay step
        self.undeleted: tuple[list[int], list[str]] | None = None  # pushed rows: keys, job ids
        self.listener: Any = None
        self._listen_again = 0.0  # when to try listening again after a failure

    def run(self) -> None:
        backoff = 0.1
        while not self.stopped.is_set():
            try:
                more = self.round()
            except redis.RedisError as exc:
                logger.warning("outbox relay (%s): Redis unavailable, retrying in %.1fs: %s", self.alias, backoff, exc)
            except DatabaseError as exc:
                logger.warning("outbox relay (%s): database unavailable, retrying in %.1fs: %s", self.alias, backoff, exc)
                self._close_database()
            except Exception:
                logger.exception("outbox relay (%s) failed, retrying in %.1fs", self.alias, backoff)
                self._close_database()
            else:
                backoff = 0.1
                if not more:
                    self._idle()
                continue
            self.stopped.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
        self._finish()

    def round(self) -> bool:
        """Delete what the last round pushed, then relay one batch if this process holds the
        lease. True when more rows are waiting."""
        self._delete()
        if not self.holding:
            if not self.broker.take_lock(self.broker.keys.outbox_lease(self.alias), self.holder, self.lease_ms)[0]:
                return False
            self.holding = True
            logger.info("outbox relay (%s): this process relays the outbox", self.alias)
        if self.listener is None and time.monotonic() >= self._listen_again:
            self._listen()  # before the read: a commit after it is notified
        keys, rows = outbox.pending(self.alias)
        result = self.broker.relay(self.alias, self.holder, self.lease_ms, self.forget, rows)
        if result is None:  # the lease ended (a stall, a Redis restart): another may relay now
            logger.info("outbox relay (%s): the lease was lost; relaying again once it is free", self.alias)
            self._let_go()
            return False
        self.forget = []
        if not rows:
            return False
        self.undeleted = (keys, [row[0] for row in rows])
        pushed, skipped, conflicts = result
        for job_id, holder in conflicts:
            logger.info("outbox relay (%s): job %s not enqueued: its unique lock is held by job %s", self.alias, job_id, holder)
        if skipped:
            logger.info(
                "outbox relay (%s): %d job(s) were pushed by a relay that stopped before deleting their rows; "
                "not pushed again", self.alias, skipped,
            )
        self._delete()
        return len(rows) == outbox.BATCH

    def _delete(self) -> None:
        if self.undeleted is not None:
            keys, job_ids = self.undeleted
            outbox.delete(self.alias, keys)
            self.undeleted = None
            self.forget += job_ids

    def _idle(self) -> None:
        """Wait for rows (or, without the lease, for the next try to take it); the lease is
        renewed by the round that follows, well within its time."""
        if not self.holding:
            self.stopped.wait(self.lease / 3)
            return
        if self.listener is None:
            connections[self.alias].close_if_unusable_or_obsolete()  # CONN_MAX_AGE, as a request would
            self.stopped.wait(min(self.poll_interval, self.lease / 3))
            return
        # Listening, the connection stays open: a new one at each wake would cost the commit's
        # job a connect (milliseconds on PostgreSQL). A broken one fails the round, which closes it.
        deadline = time.monotonic() + self.lease / 3
        while not self.stopped.is_set() and (left := deadline - time.monotonic()) > 0:
            woken = False
            try:
                for _ in self.listener.notifies(timeout=min(LISTEN_SLICE, left), stop_after=1):
                    woken = True
                if woken:
                    for _ in self.listener.notifies(timeout=0):  # commits the next read sees anyway
                        pass
                    return
            except psycopg.Error as exc:
                logger.warning("outbox relay (%s): stopped listening (%s); polling until it listens again", self.alias, exc)
                self._unlisten()
                self.stopped.wait(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
                return

    # -- PostgreSQL notifications --------------------------------------------------------------

    def _listen(self) -> None:
        connection = connections[self.alias]
        if not _LISTENS or getattr(connection, "Database", None) is not psycopg:
            self._listen_again = float("inf")  # this database is polled
            return
        listener = None
        try:
            listener = psycopg.connect(**connection.get_connection_params(), autocommit=True)
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(OUTBOX_CHANNEL)))
        except psycopg.Error as exc:
            logger.warning(
                "outbox relay (%s): cannot listen for commits (%s); polling, and trying again in %.0fs",
                self.alias, exc, LISTEN_RETRY,
            )
            self._listen_again = time.monotonic() + LISTEN_RETRY
            if listener is not None:
                listener.close()
            return
        self.listener = listener

    def _unlisten(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            try:
                listener.close()
            except psycopg.Error:
                pass

    # -- endings ---------------------------------------------------------------------------------

    def _let_go(self) -> None:
        self.holding = False
        self.forget = []  # another relay's step would refuse them; their TTL ends them
        self._unlisten()

    def _close_database(self) -> None:
        self._unlisten()
        try:
            connections[self.alias].close()
        except DatabaseError:
            pass

    def _finish(self) -> None:
        """Stopping: delete what was pushed, hand the lease to the next process at once."""
        try:
            self._delete()
        except DatabaseError as exc:
            logger.warning("outbox relay (%s): rows relayed last stay until the next relay skips them: %s", self.alias, exc)
        if self.holding:
            try:
                if self.forget:
                    self.broker.relay(self.alias, self.holder, self.lease_ms, self.forget, [])
                self.broker.unlock(self.broker.keys.outbox_lease(self.alias), self.holder)
            except redis.RedisError:
                pass  # the lease and the ids end with their TTLs
        self._let_go()
        self._close_database()
