"""The Python face of the Lua steps: one method per atomic operation.

One ``Broker`` per process and settings; redis-py's pool notices a fork and reconnects, so a
supervisor's children inherit nothing stale.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import redis
from django.core.signals import setting_changed
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    TryAgainError,
)

from django_async_jobs.broker import cluster, sentinel
from django_async_jobs.broker.keys import Keys
from django_async_jobs.conf import Settings, get_settings

DAILY_STATS_TTL = 5 * 365 * 24 * 3600
POLL_BATCH = 1000
# Seconds to wait for a reply. Without it a Redis that accepts but never answers hangs every
# thread that talks to it. The library sends no blocking command (the notify channel is read
# with its own timeout), so this only ever cuts a Redis that stopped answering; blocking
# commands of your own through this client need ``?socket_timeout=`` in REDIS_URL.
READ_TIMEOUT = 30.0
# Seconds a fetch record outlives its process's recovery (recover.lua): far beyond any delay
# before Redis can run a late copy of that process's fetch (TCP gives up after ~15 minutes).
FETCH_RECORD_TTL = 24 * 3600
# Seconds the outbox relay remembers a job id it pushed, unless it forgets it sooner once the
# row is deleted (relay.lua): what a relay that died between its push and its delete leaves.
RELAYED_TTL = 24 * 3600
# Members find.lua reads (about) at most a call: some 4 ms of Redis's time (2 µs a member of a
# job's size), so that a search by id never holds Redis for long.
FIND_READS = 2000
# An outbox row as the relay step takes it: job id, queue, priority, run-at epoch (or None), a
# unique job's enqueue lock key (or "") and its TTL in ms (or None), payload.
RelayedRow = tuple[str, str, int, float | None, str, int | None, str]


@cache
def _script_source(name: str) -> str:
    scripts = resources.files("django_async_jobs.broker") / "scripts"
    lib = (scripts / "lib.lua").read_text()
    return lib + "\n" + (scripts / f"{name}.lua").read_text()


def connect(settings: Settings) -> redis.Redis | RedisCluster:
    """The Redis client for these settings: from a django-redis cache alias, or from the URL
    (a ``redis+sentinel://`` one: the master its sentinels name, see ``sentinel``; a
    ``redis+cluster://`` one: a ``RedisCluster``, see ``cluster``)."""
    if settings.cache_alias:
        from django_redis import get_redis_connection

        return get_redis_connection(settings.cache_alias)
    if settings.redis_url.startswith("fakeredis://"):
        import fakeredis

        return fakeredis.FakeRedis(server=_fake_server())
    # A connect to a host that drops packets would otherwise wait for the kernel (minutes), and
    # a worker could not act on a stop signal meanwhile. Options in the URL still win.
    defaults = {"health_check_interval": 30, "socket_connect_timeout": 5, "socket_timeout": READ_TIMEOUT}
    if settings.redis_url.startswith(sentinel.PREFIX):
        return sentinel.connect(settings.redis_url, **defaults)
    if settings.redis_url.startswith(cluster.PREFIX):
        return cluster.connect(settings.redis_url, **defaults)
    return redis.Redis.from_url(settings.redis_url, **defaults)


@cache
def _fake_server() -> Any:
    import fakeredis

    return fakeredis.FakeServer()


def route(payloads: Iterable[str]) -> list[Any]:
    """Payloads as the push script takes them: queue, priority, payload for each job.

    A payload that names no queue is left out, as the worker would bury it.
    """
    entries: list[Any] = []
    for payload in payloads:
        try:
            job = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(job, dict) or not isinstance(job.get("queue"), str) or not job["queue"]:
            continue
        priority = job.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, (int, float)):
            priority = 0
        entries += (job["queue"], priority, payload)
    return entries


# Queue scores, as lib.lua's band() and TAIL compute them for the jobs a script moves: higher
# priority sorts first, and a job joining the back of its band is scored band + TAIL (equal
# scores keep enqueue order through the job ids; see redis-data-model.md).
BAND = 2**45
TAIL = 2**44


def score(priority: int) -> int:
    """The score of a ready job of this priority (clamped to -100..100, as the scripts do)."""
    return (100 - max(-100, min(100, priority))) * BAND + TAIL


def _resp(*parts: str | int) -> bytes:
    """RESP bulk strings, in one pass: redis-py's packer copies the packet so far for each
    argument under 6 KB, which was most of the Python of a bulk push of 1,000 jobs (see
    Broker.push_one, push_stream and the ``plain`` calls of ``_run``)."""
    out = []
    for part in parts:
        data = part.encode() if type(part) is str else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


_today: tuple[int, str] = (0, "")


def today() -> str:
    """The UTC date for daily counters; formatted at most once a second (it is on every settle)."""
    global _today
    second = int(time.time())
    if _today[0] != second:
        _today = (second, datetime.now(UTC).strftime("%Y-%m-%d"))
    return _today[1]


class Broker:
    """Every Redis operation of the project, named after what it does to a job."""

    def __init__(
        self, settings: Settings, connection: redis.Redis | RedisCluster | None = None, partition: int = 0
    ) -> None:
        self.settings = settings
        self.redis = connection if connection is not None else connect(settings)
        # A cluster runs a Lua step only on keys of one slot (hence the tagged keys), and its
        # pipelines refuse PUBLISH and MGET (and MULTI, in redis-py 5.0): the few places that
        # differ ask ``self.cluster``.
        self.cluster = isinstance(self.redis, RedisCluster)
        self.keys = Keys.cluster(settings.key_prefix, partition) if self.cluster else Keys(settings.key_prefix)
        # Plain redis-py clients get per-thread direct connections (see _command), and so do
        # clusters (to the master of the keys' slot, see _cluster_command); fakes, other client
        # classes and Sentinel's pools (whose connections find the master on every connect, and
        # drop an old one) go through their own execute_command.
        self._direct = type(self.redis) is redis.Redis and type(self.redis.connection_pool) is redis.ConnectionPool
        self._local = threading.local()
        k = self.keys
        # Every partition wakes idle workers on partition 0's channel: a worker listens to one
        # (a cluster carries a PUBLISH to every node, whichever slot its name is in).
        notify = Keys.cluster(settings.key_prefix).notify if partition else k.notify
        self._prelude = ((k.queues, k.seq, k.dead), (k.queue_base, notify))  # see _frame
        self._push_heads: dict[tuple[str, Any], bytes] = {}  # see push_one
        self._settle_cache: tuple[tuple[str, str], list[str]] = (("", ""), [])  # see _settle_keys
        self._push_tail = b"*3\r\n" + _resp("PUBLISH", k.notify, "ready")
        self._scripts = {
            name: self.redis.register_script(_script_source(name))
            for name in (
                "push", "fetch", "settle", "heartbeat", "recover", "release", "poll", "lock_push", "unlock",
                "renew_locks", "cron_push", "clear",
                "pick", "find", "relay", "rate_limit", "concurrency", "checkpoint", "batch", "metrics", "metrics_read",
            )
        }

    @property
    def partitions(self) -> list[Broker]:
        """The brokers of each key space the jobs are spread over (``Partitioned``): this one
        alone but in a cluster with ``CLUSTER_PARTITIONS`` over 1."""
        return [self]

    def twins(self, key: str) -> list[str]:
        """``key`` as each partition has it (a queue, the schedule, ...): ``key`` alone here."""
        return [key]

    def _frame(self, keys: list[str], args: list[Any]) -> tuple[list[str], list[Any]]:
        """A script's keys and args behind those lib.lua, every script's prelude, reads first:
        KEYS[1..3] = known queues, sequence, dead stage; ARGV[1..2] = queue key base, channel."""
        shared_keys, shared_args = self._prelude
        return [*shared_keys, *keys], [*shared_args, *args]

    def _run(
        self, name: str, keys: list[str], args: list[Any], client: Any = None, connection: Any = None,
        plain: bool = False,
    ) -> Any:
        """Run a script. ``plain``: its arguments are str, int and float only, up to thousands
        of them (a bulk's payloads, job ids), packed in one pass (``_resp``)."""
        script = self._scripts[name]
        all_keys, all_args = self._frame(keys, args)
        if client is not None:  # a pipeline: redis-py loads its scripts before it executes
            return script(keys=all_keys, args=all_args, client=client)
        # A Redis that lost its script cache (restart, SCRIPT FLUSH) gets the script again.
        try:
            return self._command(
                "EVALSHA", script.sha, len(all_keys), *all_keys, *all_args, connection=connection, plain=plain
            )
        except NoScriptError:
            return script(keys=all_keys, args=all_args)

    def _command(self, *args: Any, connection: Any = None, plain: bool = False) -> Any:
        """One command on this thread's own connection (or the caller's), outside redis-py's pool.

        On the hot path (enqueue, fetch, settle) the pool's and the Script wrapper's
        bookkeeping cost as much Python as the round trip itself.
        """
        if not self._direct:
            if self.cluster:
                return self._cluster_command(args, connection or self._connection())
            return self.redis.execute_command(*args)
        conn = connection or self._connection()
        packed = [b"*%d\r\n%s" % (len(args), _resp(*args))] if plain else conn.pack_command(*args)
        return self._exchange(conn, packed, 1)

    def _cluster_command(self, args: tuple[Any, ...], conn: Any) -> Any:
        """``_command`` in a cluster: straight to the master that serves the keys' one slot, on
        a connection of the caller's or this thread's own, as on a single server (RedisCluster's
        routing costs as much Python as the round trip). When that master is gone or no longer
        serves the slot (a failover, a resharding), the command goes through RedisCluster,
        which follows the cluster to the new master, and the connection is pointed there."""
        try:
            return self._exchange(conn, conn.pack_command(*args), 1)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            if isinstance(exc, redis.ResponseError) and not _moved(exc):
                raise
        reply = self.redis.execute_command(*args)
        conn.disconnect()
        try:
            home = self._home().connection_kwargs
        except redis.ConnectionError:
            return reply  # the slot map is being redone: pointed again at the next miss
        conn.host, conn.port = home["host"], home["port"]
        return reply

    def _exchange(self, conn: Any, packed: list[bytes], replies: int, attempt: Any = None) -> Any:
        """Send packed commands, read their replies; the last reply is returned, the first error
        raised once all are read. A dropped connection is retried once on a fresh one, as
        redis-py does. ``attempt`` is how one try reads (default ``_replies``)."""
        attempt = attempt or self._replies
        try:
            return attempt(conn, packed, replies)
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            return attempt(conn, packed, replies)
        except redis.ResponseError:
            raise  # every reply was read: the connection is fine
        except BaseException:
            conn.disconnect()  # interrupted mid-reply: never reuse a half-read connection
            raise

    @staticmethod
    def _replies(conn: Any, packed: list[bytes], replies: int) -> Any:
        """One attempt of ``_exchange``: every reply is read even after an error reply."""
        conn.send_packed_command(packed)
        error = reply = None
        for _ in range(replies):
            try:
                reply = conn.read_response()
            except redis.ResponseError as exc:  # read whole: the connection stays usable
                error = error or exc
        if error is not None:
            raise error
        return reply

    @staticmethod
    def _line_replies(conn: Any, packed: list[bytes], replies: int) -> None:
        """``_replies`` for commands whose replies are one line each (integers, or an error):
        read straight off the socket, without redis-py's layers per reply, which cost a single
        enqueue as much as Redis's own work for it."""
        if conn._sock is None:
            conn.connect()
        sock = conn._sock
        got = b""
        try:
            sock.sendall(b"".join(packed))
            while got.count(b"\r\n") < replies:
                more = sock.recv(4096)
                if not more:
                    raise redis.ConnectionError("Connection closed by server.")
                got += more
        except TimeoutError as exc:
            raise redis.TimeoutError("Timeout reading from Redis") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error while talking to Redis: {exc}") from exc
        if b"-" in got:  # these commands never answer a negative number: an error reply
            line = next(line for line in got.split(b"\r\n") if line.startswith(b"-"))
            raise conn._parser.parse_error(line[1:].decode(errors="replace"))

    def _connection(self) -> Any:
        conn = getattr(self._local, "connection", None)
        if conn is None or conn.pid != os.getpid():
            conn = self._local.connection = self.own_connection()
        return conn

    def own_connection(self) -> Any:
        """A connection outside the pool, for a role that moves between threads (a worker's
        fetch) and so cannot use the calling thread's; None where calls go through the client.
        In a cluster, to the master serving the keys' slot (``_cluster_command``)."""
        if self.cluster:
            pool = self._home()
        elif not self._direct:
            return None
        else:
            pool = self.redis.connection_pool
        return pool.connection_class(**pool.connection_kwargs)

    def _home(self) -> Any:
        """The connection pool of the cluster's master for the keys' slot, as RedisCluster
        knows it now; ``redis.ConnectionError`` while it knows none (in a failover)."""
        try:
            node = self.redis.get_node_from_key(self.keys.queues)
        except RedisClusterException as exc:
            raise redis.ConnectionError(f"no master serves the jobs' slot now: {exc}") from exc
        return self.redis.get_redis_connection(node).connection_pool

    # -- client side -------------------------------------------------------------------------

    def push(self, payloads: list[str]) -> int:
        """Make jobs ready now; one round trip for the whole list. Returns how many went."""
        return self.push_routed(route(payloads))

    def push_routed(self, entries: list[Any], client: Any = None) -> int:
        """``push`` for jobs routed by the caller: queue, priority, payload for each job."""
        return self._run("push", [], entries, client, plain=True)

    def push_one(self, queue: str, priority: int, payload: str) -> None:
        """Make one job ready now: ``perform_later``'s push, the hot path of every enqueue.

        Three plain commands in one round trip, no script: record the queue's name, add the
        job at the back of its band, wake idle workers. Nothing here needs the steps to be one:
        the name alone is harmless and the wake-up only shortens a wait. The commands are packed
        ahead of time per queue and priority; only the payload is added per job.
        """
        if self.cluster:  # no PUBLISH in a cluster's pipeline: the push script does all three
            self.push_routed([queue, priority, payload])
            return
        if not self._direct:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.sadd(self.keys.queues, queue)
                pipe.zadd(self.keys.queue(queue), {payload: score(priority)})
                pipe.publish(self.keys.notify, "ready")
                pipe.execute()
            return
        head = self._push_heads.get((queue, priority))
        if head is None:
            if len(self._push_heads) > 1000:  # queue names made per call (queue_as callables)
                self._push_heads.clear()
            head = self._push_heads[(queue, priority)] = (
                b"*3\r\n" + _resp("SADD", self.keys.queues, queue)
                + b"*4\r\n" + _resp("ZADD", self.keys.queue(queue), score(priority))
            )
        data = payload.encode()
        packed = [b"%s$%d\r\n%s\r\n%s" % (head, len(data), data, self._push_tail)]
        self._exchange(self._connection(), packed, 3, self._line_replies)

    def push_stream(self, chunks: Iterable[list[Any]], on_pushed: Callable[[int], Any] | None = None) -> int:
        """Push chunk after chunk of routed entries, the next sent while Redis runs the previous
        (the replies are read one chunk behind), so a bulk enqueue pays for packing and Redis
        side by side instead of one after the other. A connection error
        part-way leaves the chunks before it pushed, as a loop of ``push_routed`` calls would;
        ``on_pushed(i)`` is called as Redis answers for chunk ``i`` (0 first), so the caller
        knows which.
        """
        chunks = iter(chunks)
        first = next(chunks, None)
        if first is None:
            return 0
        report = on_pushed or _ignore
        pushed = self.push_routed(first)  # also loads the script into a Redis that lost it
        report(0)
        done = 1
        if not self._direct:
            for chunk in chunks:
                pushed += self.push_routed(chunk)
                report(done)
                done += 1
            return pushed
        keys, args = self._frame([], [])
        head = ("EVALSHA", self._scripts["push"].sha, len(keys), *keys, *args)
        packed_head = _resp(*head)
        conn = self._connection()
        owed = 0
        try:
            for chunk in chunks:
                conn.send_packed_command([b"*%d\r\n%s%s" % (len(head) + len(chunk), packed_head, _resp(*chunk))])
                owed += 1
                if owed > 1:
                    pushed += conn.read_response()
                    owed -= 1
                    report(done)
                    done += 1
            while owed:
                pushed += conn.read_response()
                owed -= 1
                report(done)
                done += 1
        except BaseException:
            conn.disconnect()  # replies still owed: never reuse this connection
            raise
        return pushed

    def relay(
        self, alias: str, holder: str, lease_ms: int, forget: list[str], rows: Iterable[RelayedRow]
    ) -> tuple[int, int, list[tuple[str, str]]] | None:
        """Push outbox rows of database ``alias`` into their queues (or the schedule), each job
        id once, if ``holder`` holds that database's relay lease (renewed here); forget the ids
        in ``forget``, whose rows are deleted. One round trip; see relay.lua.

        Returns (pushed, skipped as relayed before, [(job id, holder) of each unique job whose
        enqueue lock another job holds]), or None when the lease is not ``holder``'s.
        """
        k = self.keys
        locks: list[str] = []
        entries: list[Any] = []
        for job_id, queue, priority, run_at, lock, lock_ttl, payload in rows:
            index = 0
            # Only this prefix's lock keys: a row is never a way to set any other key.
            if lock and lock.startswith(k.lock_base) and lock_ttl:
                locks.append(lock)
                index = 6 + len(locks)
            entries += (job_id, queue, priority, "" if run_at is None else repr(run_at), index, lock_ttl or 0, payload)
        reply = self._run(
            "relay", [k.outbox_lease(alias), k.outbox_relayed, k.schedule, *locks],
            [holder, lease_ms, RELAYED_TTL, len(forget), *forget, *entries],
        )
        if reply[0] == -1:
            return None
        held = [value.decode() if isinstance(value, bytes) else value for value in reply[2:]]
        return reply[0], reply[1], list(zip(held[::2], held[1::2], strict=True))

    def schedule(self, entries: list[tuple[str, float]], client: Any = None) -> int:
        """Delay jobs until their epoch times (the poller moves them when due)."""
        mapping = dict(entries)
        return (client or self.redis).zadd(self.keys.schedule, mapping)

    def push_and_schedule(self, entries: list[Any], delayed: list[tuple[str, float]]) -> None:
        """``push_routed`` and ``schedule`` in one round trip. A cluster's pipeline leaves a
        script its cache lost to the caller (redis-py): there, two calls that each handle it."""
        if self.cluster:
            self.push_routed(entries)
            self.schedule(delayed)
            return
        with self.redis.pipeline(transaction=False) as pipe:
            self.push_routed(entries, client=pipe)
            self.schedule(delayed, client=pipe)
            pipe.execute()

    def lock_push(
        self, key: str, job_id: str, ttl_ms: int, payload: str, run_at: float | None = None
    ) -> tuple[bool, str | None]:
        """Take a unique job's lock and push (or schedule) it, atomically; (False, holder) if taken."""
        result = self._run(
            "lock_push", [key, self.keys.schedule], [job_id, ttl_ms, payload, "" if run_at is None else repr(run_at)]
        )
        if result[0] == 1:
            return True, None
        holder = result[1]
        return False, holder.decode() if isinstance(holder, bytes) else holder

    def take_lock(self, key: str, holder: str, ttl_ms: int) -> tuple[bool, str | None]:
        """SET NX with a TTL; (False, current holder) when someone else has it."""
        previous = self.redis.set(key, holder, nx=True, px=ttl_ms, get=True)
        if previous is None:
            return True, None
        return False, previous.decode() if isinstance(previous, bytes) else previous

    def unlock(self, key: str, holder: str) -> None:
        """Release a lock only if ``holder`` still holds it."""
        self._run("unlock", [key], [holder])

    def renew_locks(self, held: list[tuple[str, str, int]]) -> int:
        """Give each (lock, holder, TTL in ms) its TTL again where the holder still holds it."""
        if not held:
            return 0
        return self._run("renew_locks", [key for key, _, _ in held], [v for _, *pair in held for v in pair])

    def cron_push(
        self, entry: str, tick: int, job_id: str, payload: str, lock: str | None = None, lock_ttl_ms: int = 0
    ) -> tuple[int, str | None]:
        """Enqueue a recurring entry's job for ``tick`` unless that tick (or a later one) was,
        taking a unique job's enqueue ``lock`` in the same step. Returns (1, None) when pushed,
        (0, None) when the tick was handled already, (-1, holder) when the lock is taken."""
        keys = [self.keys.cron(entry), *([lock] if lock else [])]
        reply = self._run("cron_push", keys, [tick, job_id, payload, lock_ttl_ms])
        holder = reply[1] if len(reply) > 1 else None
        return int(reply[0]), holder.decode() if isinstance(holder, bytes) else holder

    def concurrency_acquire(self, limit_id: str, field: str, job_id: str, process_id: str, to: int, ttl_ms: int) -> bool:
        """Take a place of a concurrency limit for a job about to start (the one kept for it if it
        left the blocked list, or a free one); False when the limit is full."""
        return self._run(
            "concurrency", [self.keys.concurrency(limit_id), self.keys.processes],
            ["acquire", field, job_id, process_id, to, ttl_ms],
        ) == 1

    def concurrency_sweep(self, limit_id: str, to: int, again_ms: int) -> int:
        """Move a limit's blocked jobs to their queues for places freed without a job finishing;
        look again in ``again_ms`` while some are blocked. Returns how many moved."""
        k = self.keys
        return self._run(
            "concurrency",
            [k.concurrency(limit_id), k.processes, k.concurrency_blocked(limit_id), k.blocked],
            ["sweep", limit_id, to, again_ms],
        )

    def due_blocked(self, count: int = 50) -> list[str]:
        """Ids of concurrency limits with blocked jobs due for a look."""
        seconds, micros = self.redis.time()
        ids = self.redis.zrangebyscore(self.keys.blocked, "-inf", seconds * 1000 + micros // 1000, start=0, num=count)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def rate_limit(self, key: str, kind: str, count: int, period_ms: int, token: str = "") -> tuple[bool, int]:
        """One call of a rate limiter, counted if it may go ahead: (True, 0), or (False, the
        wait in ms until it might). See rate_limit.lua."""
        allowed, wait_ms = self._run("rate_limit", [key], [kind, count, period_ms, token])
        return allowed == 1, int(wait_ms)

    def rate_unlock(self, key: str, token: str) -> None:
        """Give back a concurrent limiter's lock."""
        self.redis.zrem(key, token)

    # -- batches -----------------------------------------------------------------------------

    def batch_open(
        self, keys: list[str], bid: str, ttl: int, retention: int, description: str,
        callbacks: tuple[str, str, str], create: bool,
    ) -> int:
        """Begin a ``jobs()`` block of the batch ``keys[0]`` (``keys``: the batch, then its
        parents), creating it with its callbacks (JSON lists) if ``create``. 1: created, 0:
        opened, -1: the batch is gone (expired or never made)."""
        return self._run(
            "batch", [self.keys.batches, *keys],
            ["open", bid, ttl, retention, description, *callbacks, int(create)],
        )

    def batch_add(self, keys: list[str], job_ids: list[str], ttl: int, close: bool = False) -> int:
        """Register job ids as members of batch ``keys[0]``; with ``close``, end the block too
        (its callbacks fire then when due). Returns how many joined."""
        return self._run("batch", [self.keys.batches, *keys], ["close" if close else "add", ttl, *job_ids], plain=True)

    def batch_dead(self, keys: list[str], job_id: str) -> None:
        """Count a member of batch ``keys[0]`` dead that no settle step buried (a poison pill of
        a recovery); idempotent per member."""
        self._run("batch", [self.keys.batches, *keys], ["dead", job_id])

    def batch_cancel(self, bid: str) -> bool:
        """Mark a batch cancelled; False when it is gone."""
        return self._run("batch", [self.keys.batches, self.keys.batch(bid)], ["cancel"]) == 1

    # -- worker side -------------------------------------------------------------------------

    def fetch(
        self, process_id: str, queues: list[str], count: int, connection: Any = None, *, attempt: int, received: int
    ) -> list[tuple[bytes, bytes]]:
        """Move up to ``count`` jobs into the process's in-flight hash; ``connection`` is the
        caller's own (``own_connection``), else the calling thread's.

        ``attempt`` numbers this fetch (1, 2, ... per process, a resend keeps its number);
        ``received`` is the last attempt whose reply the caller read. A fetch whose reply was
        lost is thereby harmless: the next attempt returns its jobs (see fetch.lua). Only a
        registered process (one that beat) fetches; otherwise Redis answers ``NOPROCESS``.
        """
        k = self.keys
        flat = self._run(
            "fetch", [k.inflight(process_id), k.processes, k.fetched(process_id)],
            [process_id, count, attempt, received, *queues], connection=connection,
        )
        return list(zip(flat[::2], flat[1::2], strict=True))

    def settle(self, process_id: str, ops: list[tuple[str, str, Any, Any, int]], limit_keys: Iterable[str] = ()) -> None:
        """Acknowledge, retry, bury or hand back a batch of this process's jobs atomically.

        Each op is (op, in-flight field, a, b, failed); see settle.lua. ``limit_keys``: the keys
        of the concurrency limits of the batch's limited jobs, whose places the step frees.
        """
        k = self.keys
        args: list[Any] = [DAILY_STATS_TTL]
        for op in ops:
            args.extend(op)
        keys = self._settle_keys(process_id, today())
        if limit_keys:
            keys = [*keys, k.processes, k.blocked, *dict.fromkeys(limit_keys)]
        self._run("settle", keys, args)

    def _settle_keys(self, process_id: str, day: str) -> list[str]:
        """The settle step's fixed keys, built once per process and day (it runs once per job
        or batch of jobs)."""
        cached = self._settle_cache
        if cached[0] != (process_id, day):
            k = self.keys
            cached = self._settle_cache = ((process_id, day), [
                k.inflight(process_id), k.recoveries, k.retry,
                k.stat("processed"), k.stat("processed", day),
                k.stat("failed"), k.stat("failed", day), k.schedule, k.stat("expired"),
            ])
        return cached[1]

    def heartbeat(
        self, process_id: str, info: dict[str, Any], ttl: float, stranded: Iterable[str] = (), max_recoveries: int = 0
    ) -> tuple[int, int]:
        """Record the process as alive, with its ``info``; hand back ``stranded`` in-flight jobs
        (held by none of its threads), counting a recovery each. Returns (handed back, dead)."""
        k = self.keys
        stranded = list(stranded)
        fields: list[Any] = []
        for name, value in info.items():
            fields.extend((name, value))
        back, dead = self._run(
            "heartbeat",
            [k.processes, k.process(process_id), k.fetched(process_id), k.inflight(process_id), k.recoveries],
            [process_id, max(1, int(ttl)), max_recoveries, len(stranded), *stranded, *fields],
        )
        return back, dead

    def recover(self, timeout: float, max_recoveries: int) -> tuple[int, int, int]:
        """Requeue the jobs of processes that stopped beating; returns (processes, requeued, dead)."""
        k = self.keys
        gone, recovered, dead = self._run(
            "recover",
            [k.processes, k.recoveries],
            [k.inflight_base, timeout, max_recoveries, k.process_base, k.fetched_base, FETCH_RECORD_TTL],
        )
        return gone, recovered, dead

    def release(self, process_id: str, max_recoveries: int, unstarted: Iterable[str] = ()) -> tuple[int, int]:
        """A stopping process hands back everything it holds: the ``unstarted`` fields as they
        were, the rest counting a recovery each (see release.lua). Returns (handed back, dead)."""
        k = self.keys
        back, dead = self._run(
            "release",
            [k.inflight(process_id), k.processes, k.process(process_id), k.fetched(process_id), k.recoveries],
            [process_id, max_recoveries, *unstarted],
        )
        return back, dead

    def poll(self) -> tuple[int, float | None]:
        """Move due scheduled and retry jobs; returns (moved, seconds to the next due job)."""
        moved, wait = self._run("poll", [self.keys.schedule, self.keys.retry], [POLL_BATCH])
        wait = float(wait)
        return moved, (None if wait < 0 else wait)

    def checkpoint(self, process_id: str, field: str, payload: bytes) -> bool:
        """Replace a running job's in-flight payload (its progress saved, see resumable.py), only
        while the job is still in this process's hash; False when it no longer is."""
        return bool(self._run("checkpoint", [self.keys.inflight(process_id)], [field, payload]))

    def cancelled_in_flight(self, process_id: str) -> frozenset[str]:
        """The ids of the jobs this process holds that ``mark_cancelled`` marked: two round
        trips, at each heartbeat (one when it holds nothing)."""
        fields = [f for part in self.partitions for f in part.redis.hkeys(part.keys.inflight(process_id))]
        if not fields:
            return frozenset()
        ids = sorted({(f.decode() if isinstance(f, bytes) else f).rpartition(":")[0] for f in fields})
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(self.keys.cancel(job_id))
            found = pipe.execute()
        return frozenset(job_id for job_id, marked in zip(ids, found, strict=True) if marked)

    def mark_cancelled(self, job_id: str, ttl: float) -> None:
        """Mark a job cancelled for ``ttl`` seconds (``api.cancel``)."""
        self.redis.set(self.keys.cancel(job_id), int(time.time()), ex=max(1, int(ttl)))

    def record_metrics(self, increments: dict[int, dict[str, str]], retention: float, now: float) -> None:
        """Add a worker's buffered metrics to the minute hashes (minute -> field -> amount) and
        to their hours' hashes, in one script call; each hash expires ``retention`` seconds after
        its minute (its hour) ends; minutes already past it are left out."""
        keys: list[str] = []
        args: list[Any] = []
        for minute, amounts in increments.items():
            ttl = int((minute + 1) * 60 + retention - now)
            if ttl <= 0 or not amounts:
                continue
            hour = minute // 60
            keys += (self.keys.metrics(minute), self.keys.metrics_hour(hour))
            args += (ttl, int((hour + 1) * 3600 + retention - now), len(amounts))
            for name, amount in amounts.items():
                args += (name, amount)
        if keys:
            self._run("metrics", keys, args)

    def read_metrics(
        self, minutes: Sequence[Sequence[int]], hours: Sequence[int], since: float
    ) -> tuple[list[dict[bytes, bytes]], list[tuple[bytes, float]]]:
        """The points asked for, each a hash's fields: a group of minutes summed (one minute
        alone: its hash), then an hour each (``metrics_read.lua``); and the deploy marks from
        ``since`` (epoch) on. Two round trips."""
        keys = [self.keys.metrics(m) for group in minutes for m in group]
        keys += [self.keys.metrics_hour(h) for h in hours]
        sizes = [len(group) for group in minutes] + [1] * len(hours)
        packed = self._run("metrics_read", keys, sizes) if keys else []
        points = []
        for text in packed:
            parts = text.split(b"\0") if text else []
            points.append(dict(zip(parts[::2], parts[1::2], strict=True)))
        marks = self.redis.zrangebyscore(self.keys.metrics_marks, since, "+inf", withscores=True)
        return points, marks

    def add_metrics_mark(self, member: str, at: float, retention: float) -> None:
        """Add a deploy mark, forgetting those older than ``retention``."""
        key = self.keys.metrics_marks
        # No MULTI (which a cluster's pipeline refuses): each command is right on its own.
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {member: at})
            pipe.zremrangebyscore(key, "-inf", f"({time.time() - retention}")
            pipe.expire(key, max(1, int(retention)))
            pipe.execute()

    def pubsub(self) -> Any:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.notify)
        return pubsub

    # -- inspection --------------------------------------------------------------------------

    def queue_size(self, name: str) -> int:
        return sum(part.redis.zcard(part.keys.queue(name)) for part in self.partitions)

    def inflight(self, process_id: str) -> dict[bytes, bytes]:
        held: dict[bytes, bytes] = {}
        for part in self.partitions:
            held.update(part.redis.hgetall(part.keys.inflight(process_id)))
        return held

    def staged_dead(self) -> int:
        """Dead jobs staged in Redis, not yet written to the database."""
        return sum(part.redis.hlen(part.keys.dead) for part in self.partitions)

    def stat(self, name: str, day: str | None = None) -> int:
        return sum(int(part.redis.get(part.keys.stat(name, day)) or 0) for part in self.partitions)

    # -- operations (dashboard and ``jobs`` command) -----------------------------------------

    def pick(self, source: str, op: str, picks: list[tuple[str, str]]) -> int:
        """``delete``, ``enqueue`` (run now) or ``kill`` jobs of a sorted set, named by (score, id)."""
        if op not in ("delete", "enqueue", "kill"):
            raise ValueError(f"unknown operation {op!r}")
        args: list[Any] = [op]
        for score, job_id in picks:
            args.extend((score, job_id))
        return self._run("pick", [source], args)

    def find(self, key: str, job_id: str) -> Iterator[tuple[bytes, float]]:
        """(member, score) of the members of sorted set ``key`` that may be job ``job_id`` (the
        caller checks their ids). ``find.lua`` reads about ``FIND_READS`` members a call: a
        queue's priority band by bisection, whatever its length, the rest a slice at a time."""
        cursor: bytes | str = ""
        while True:
            reply = self._run("find", [key], [job_id, cursor, FIND_READS])
            for i in range(1, len(reply), 2):
                yield reply[i], float(reply[i + 1])
            cursor = reply[0]
            if not cursor:
                return

    def clear_queue(self, name: str) -> int:
        """Empty a queue and forget its name at once (in every partition); returns how many
        jobs went."""
        return sum(part._run("clear", [part.keys.queue(name)], [name]) for part in self.partitions)

    def pause_queue(self, name: str) -> bool:
        """Stop every worker fetching from ``name``; its jobs stay. False if it was paused."""
        return bool(self.redis.sadd(self.keys.paused, name))

    def resume_queue(self, name: str) -> bool:
        """Let workers fetch from ``name`` again, and wake idle ones. False if it was not paused."""
        removed = self.redis.srem(self.keys.paused, name)
        self.redis.publish(self.keys.notify, "ready")  # on its own: a cluster's pipeline refuses PUBLISH
        return bool(removed)

    def paused_queues(self) -> set[str]:
        return {name.decode() if isinstance(name, bytes) else name for name in self.redis.smembers(self.keys.paused)}

    def mark_cron_manual(self, entry: str, job_id: str) -> None:
        """Record a recurring entry's "Run now" beside its last tick (one HSET: atomic)."""
        self.redis.hset(self.keys.cron(entry), mapping={"manual_at": f"{time.time():.3f}", "manual_job_id": job_id})

    def signal_process(self, process_id: str, signal: str, ttl: float) -> None:
        """Ask a worker process to ``quiet`` or ``stop``; it acts on its next heartbeat."""
        if signal not in ("quiet", "stop"):
            raise ValueError(f"unknown signal {signal!r}")
        self.redis.set(self.keys.process_signal(process_id), signal, ex=max(1, int(ttl)))

    def take_signal(self, process_id: str) -> str | None:
        """The signal waiting for this process, if any, consumed so it acts once."""
        value = self.redis.getdel(self.keys.process_signal(process_id))
        return value.decode() if isinstance(value, bytes) else value

    def flush(self) -> int:
        """Delete every key of this prefix (tests and ``jobs clear --all``), on every server."""
        deleted = 0
        for part in self.partitions:
            for server in self.servers():
                for batch in _chunks(server.scan_iter(match=part.keys.pattern, count=1000), 1000):
                    deleted += self.redis.delete(*batch)  # a cluster's client splits it by slot
        return deleted

    def servers(self) -> list[redis.Redis]:
        """A plain client of the server, or of each master of a cluster: for what is asked of
        every server (INFO, SCAN), which a cluster client would merge or spread over them."""
        if not self.cluster:
            return [self.redis]
        return [self.redis.get_redis_connection(node) for node in self.redis.get_primaries()]

    def scan(self, match: str, limit: int, calls: int, count: int) -> list[str]:
        """Up to ``limit`` keys that match ``match``, found with at most ``calls`` SCAN calls of
        ``count`` per server: a bounded look, for listings."""
        found: list[str] = []
        for server in self.servers():
            cursor = None
            for _ in range(calls):
                if cursor == 0 or len(found) >= limit:
                    break
                cursor, names = server.scan(cursor or 0, match=match, count=count)
                found += [name.decode() if isinstance(name, bytes) else name for name in names]
        return found[:limit]

    def server_info(self) -> list[tuple[dict[str, Any], int]]:
        """``INFO`` and the key count of each server (one, or each master of a cluster)."""
        replies = []
        for server in self.servers():
            with server.pipeline(transaction=False) as pipe:
                pipe.info()
                pipe.dbsize()
                info, keys = pipe.execute()
            replies.append((info, keys))
        return replies


# What a payload names that its settle step must reach in the same slot: a unique job's locks,
# a concurrency limit's keys, a batch's. Those keys are partition 0's, so such a job is too.
KEYED = ('"lock":', '"cc":', '"batch":')


class Partitioned(Broker):
    """A cluster's broker for ``CLUSTER_PARTITIONS`` over 1: this object is partition 0, which
    keeps what the deployment shares (pauses, signals, recurring entries, unique jobs' locks,
    batches, concurrency and rate limits, metrics, results, the outbox relay), and ``parts``
    holds a ``Broker`` per partition. A plain job goes to the partition its queue's name
    hashes to, so a queue keeps its order; a job whose payload names shared keys (``KEYED``)
    goes to partition 0. A worker fetches from every partition (``Fetcher``), and what it does
    to a job it holds goes to the partition it fetched the job from (``hold``)."""

    def __init__(self, settings: Settings, connection: RedisCluster) -> None:
        super().__init__(settings, connection)
        self.parts = [Broker(settings, self.redis, partition) for partition in range(settings.cluster_partitions)]
        self._homes: dict[str, Broker] = {}  # in-flight field -> its partition, for this process's jobs

    @property
    def partitions(self) -> list[Broker]:
        return self.parts

    def partition_of(self, queue: str, payload: str) -> Broker:
        """Where a job goes: see the class docstring. crc32, not hash(): every process agrees."""
        if any(marker in payload for marker in KEYED):
            return self.parts[0]
        return self.parts[zlib.crc32(queue.encode()) % len(self.parts)]

    def hold(self, part: Broker, fields: Iterable[str]) -> None:
        """Remember where the fields this process fetched are, until they are settled."""
        for field in fields:
            self._homes[field] = part

    def _holder(self, field: str) -> Broker:
        return self._homes.get(field, self.parts[0])

    def _by_home(self, fields: Iterable[str]) -> dict[Broker, list[str]]:
        return _grouped(fields, self._holder)

    def _forget(self, fields: Iterable[str]) -> None:
        for field in fields:
            self._homes.pop(field, None)

    def push_one(self, queue: str, priority: int, payload: str) -> None:
        self.partition_of(queue, payload).push_routed([queue, priority, payload])

    def push_routed(self, entries: list[Any], client: Any = None) -> int:
        jobs = [entries[i : i + 3] for i in range(0, len(entries), 3)]
        groups = _grouped(jobs, lambda job: self.partition_of(job[0], job[2]))
        return sum(part.push_routed([x for job in group for x in job], client) for part, group in groups.items())

    def schedule(self, entries: list[tuple[str, float]], client: Any = None) -> int:
        groups = _grouped(entries, lambda entry: self._scheduled_part(entry[0]))
        return sum(part.schedule(group, client) for part, group in groups.items())

    def _scheduled_part(self, payload: str) -> Broker:
        queue = route([payload])[:1]  # a payload naming no queue: partition 0's poller buries it
        return self.partition_of(queue[0], payload) if queue else self.parts[0]

    def settle(self, process_id: str, ops: list[tuple[str, str, Any, Any, int]], limit_keys: Iterable[str] = ()) -> None:
        groups = _grouped(ops, lambda op: self._holder(op[1]))
        for part, group in groups.items():  # a retry after a partial failure: settled fields are skipped
            part.settle(process_id, group, limit_keys if part is self.parts[0] else ())
        self._forget(op[1] for op in ops)

    def heartbeat(
        self, process_id: str, info: dict[str, Any], ttl: float, stranded: Iterable[str] = (), max_recoveries: int = 0
    ) -> tuple[int, int]:
        """The process beats in every partition: each has its registry, which its recovery and
        its concurrency limits read."""
        stranded = list(stranded)
        groups = self._by_home(stranded)
        back = dead = 0
        for part in self.parts:
            b, d = part.heartbeat(process_id, info, ttl, groups.get(part, ()), max_recoveries)
            back, dead = back + b, dead + d
        self._forget(stranded)
        return back, dead

    def recover(self, timeout: float, max_recoveries: int) -> tuple[int, int, int]:
        totals = [part.recover(timeout, max_recoveries) for part in self.parts]
        # A stopped process is in every partition's registry: counted once.
        return max(t[0] for t in totals), sum(t[1] for t in totals), sum(t[2] for t in totals)

    def release(self, process_id: str, max_recoveries: int, unstarted: Iterable[str] = ()) -> tuple[int, int]:
        groups = self._by_home(unstarted)
        back = dead = 0
        for part in self.parts:
            b, d = part.release(process_id, max_recoveries, groups.get(part, ()))
            back, dead = back + b, dead + d
        self._homes.clear()
        return back, dead

    def poll(self) -> tuple[int, float | None]:
        moved, wait = 0, None
        for part in self.parts:
            m, w = part.poll()
            moved += m
            if w is not None:
                wait = w if wait is None else min(wait, w)
        return moved, wait

    def checkpoint(self, process_id: str, field: str, payload: bytes) -> bool:
        return self._holder(field).checkpoint(process_id, field, payload)

    def twins(self, key: str) -> list[str]:
        head = self.keys.prefix + ":"
        if not key.startswith(head):
            return [key]
        return [part.keys.prefix + key[len(head) - 1 :] for part in self.parts]

    def _owner(self, key: str) -> Broker:
        """The partition whose key space ``key`` is in: its steps must run there."""
        return next((part for part in self.parts if key.startswith(part.keys.prefix + ":")), self.parts[0])

    def pick(self, source: str, op: str, picks: list[tuple[str, str]]) -> int:
        return self._owner(source).pick(source, op, picks)

    def find(self, key: str, job_id: str) -> Iterator[tuple[bytes, float]]:
        return self._owner(key).find(key, job_id)


def open_broker(settings: Settings, connection: redis.Redis | RedisCluster | None = None) -> Broker:
    """The broker for these settings: a ``Partitioned`` one in a cluster with
    ``CLUSTER_PARTITIONS`` over 1, else a ``Broker``."""
    broker = Broker(settings, connection)
    if broker.cluster and settings.cluster_partitions > 1:
        return Partitioned(settings, broker.redis)
    return broker


def _grouped(items: Iterable[Any], part_of: Callable[[Any], Broker]) -> dict[Broker, list[Any]]:
    """``items`` by the partition ``part_of`` gives each, in their order."""
    groups: dict[Broker, list[Any]] = {}
    for item in items:
        groups.setdefault(part_of(item), []).append(item)
    return groups


def _ignore(index: int) -> None:
    pass


def _moved(exc: redis.ResponseError) -> bool:
    """A cluster's reply that the slot is served elsewhere or not at all right now (redis-py
    5.0's plain connections raise these as bare ``ResponseError``)."""
    return isinstance(exc, (AskError, TryAgainError, ClusterDownError)) or str(exc).startswith(
        ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")
    )


def _chunks(iterable: Any, size: int) -> Any:
    batch: list[Any] = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_broker: Broker | None = None
_lock = threading.Lock()


def get_broker() -> Broker:
    """The process's broker for the current settings."""
    global _broker
    broker = _broker
    if broker is None:
        with _lock:
            if _broker is None:
                _broker = open_broker(get_settings())
            broker = _broker
    return broker


def reset() -> None:
    global _broker
    _broker = None


def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "ASYNC_JOBS":
        reset()


setting_changed.connect(_reset, dispatch_uid="django_async_jobs.broker.client")
