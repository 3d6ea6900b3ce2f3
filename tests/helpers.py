"""Shared test helpers: deadlines instead of sleeps, worker subprocesses, private redis-servers
(alone, as a master, a replica and sentinels, or as a Redis Cluster)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from django_async_jobs.testing import wait_for  # noqa: F401  (the suite imports it from here)

ROOT = Path(__file__).resolve().parent.parent
# ASYNC_JOBS_TEST_CLUSTER=1 (make test-cluster): the whole suite against a Redis Cluster of its
# own, started once for the session (conftest.py); tests that cannot apply to one skip, saying why.
ON_CLUSTER = os.environ.get("ASYNC_JOBS_TEST_CLUSTER") == "1"


def not_on_cluster(reason: str) -> Any:
    """Skips a test under ASYNC_JOBS_TEST_CLUSTER=1, with why it cannot apply to a cluster."""
    import pytest

    return pytest.mark.skipif(ON_CLUSTER, reason=f"not on a cluster: {reason}")


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerProcess:
    """A ``runworker`` subprocess in its own process group, its output kept in a file for failures."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "django", "runworker", "-v", "1", *args],
            cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.pid} still running after {timeout}s:\n{self.output()}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def cleanup(self) -> None:
        """Kill the whole group: a supervisor's children must not outlive the test."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()


def worker_env(prefix: str, redis_url: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment tests/settings.py reads: same key prefix, Redis and settings as the test."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["ASYNC_JOBS_KEY_PREFIX"] = prefix
    env["PYTHONUNBUFFERED"] = "1"
    if redis_url:
        env["REDIS_URL"] = redis_url
    env["ASYNC_JOBS_OVERRIDES"] = json.dumps(overrides or {})
    return env


def registered(broker: Any) -> dict[str, int]:
    """Live worker processes as the heartbeat records them: process id -> OS pid."""
    out: dict[str, int] = {}
    for member in broker.redis.zrange(broker.keys.processes, 0, -1):
        process_id = member.decode()
        pid = broker.redis.hget(broker.keys.process(process_id), "pid")
        if pid is not None:
            out[process_id] = int(pid)
    return out


class RedisServer:
    """A redis-server of the test's own, on a free port, that the test may kill, restart and freeze.

    ``persist``: an append-only file synced on every write (``"always"``, survives kill -9), or
    the fsync policy to use (``"everysec"``). ``debug``: allow ``DEBUG SLEEP`` (Redis 7 refuses
    DEBUG unless the server enables it). ``args`` are more ``redis-server`` options
    (``["--replicaof", "127.0.0.1", "7000"]``); ``password`` makes it require one (and use it
    towards its master, as a replica).
    """

    def __init__(
        self, workdir: Path, persist: bool | str = False, debug: bool = False, args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.fsync = persist if isinstance(persist, str) else "always" if persist else None
        self.debug = debug
        self.args = list(args)
        self.password = password
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        aof = ["--appendonly", "yes", "--appendfsync", self.fsync] if self.fsync else ["--appendonly", "no"]
        debug = ["--enable-debug-command", "local"] if self.debug else []
        auth = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        return [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            *aof, *debug, "--dir", str(self.workdir), *auth, *self.args,
        ]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client(socket_connect_timeout=0.2)
        wait_for(lambda: _pings(client), 5, f"redis-server start on port {self.port}")
        client.close()

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, **options)

    def stop(self) -> None:
        """kill -9: nothing is saved, clients see their connections drop."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server must not outlive the test
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered; commands sent meanwhile run at
        ``thaw()``, even those whose client gave up and closed its connection."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class SentinelServer(RedisServer):
    """``redis-server --sentinel`` watching ``master`` as ``service``, from a config file of its
    own in ``workdir`` (a sentinel rewrites it with what it learns, so a restart keeps that)."""

    def __init__(
        self, workdir: Path, master: RedisServer, service: str, *, down_after_ms: int, failover_timeout_ms: int,
        password: str | None = None,
    ) -> None:
        super().__init__(workdir, password=password)
        self.config = workdir / "sentinel.conf"
        self.myid = secrets.token_hex(20)
        self.service = service
        self._lines = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {workdir}", f"sentinel myid {self.myid}",
            f"sentinel monitor {service} 127.0.0.1 {master.port} 2",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
        ]
        if master.password:
            self._lines.append(f"sentinel auth-pass {service} {master.password}")
        if password:  # the sentinels talk to each other with it too
            self._lines += [f"requirepass {password}", f"sentinel sentinel-pass {password}"]

    def know(self, replicas: Sequence[RedisServer], sentinels: Sequence[SentinelServer]) -> None:
        """Start knowing these replicas and fellow sentinels, rather than learning of them over
        the master (seconds of hello messages and INFO polls)."""
        self._lines += [f"sentinel known-replica {self.service} 127.0.0.1 {r.port}" for r in replicas]
        self._lines += [
            f"sentinel known-sentinel {self.service} 127.0.0.1 {s.port} {s.myid}" for s in sentinels if s is not self
        ]

    def command(self) -> list[str]:
        if not self.config.exists():
            self.config.write_text("\n".join(self._lines) + "\n")
        return ["redis-server", str(self.config), "--sentinel"]


class SentinelGroup:
    """A master, its ``replicas`` and three sentinels (quorum 2) of the test's own, on free ports.

    Sentinels take the master for down after ``down_after_ms`` and promote a replica, so a
    failover takes a few seconds. ``args`` are more options of the data servers
    (``["--min-replicas-to-write", "1"]``); ``password`` protects them, ``sentinel_password``
    the sentinels.
    """

    service = "mymaster"

    def __init__(
        self, workdir: Path, *, replicas: int = 1, args: Sequence[str] = (), password: str | None = None,
        sentinel_password: str | None = None, down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
    ) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        # A replica syncs at once, not after the 5 s a master waits for more replicas by default.
        sync = ["--repl-diskless-sync-delay", "0", *args]
        first = RedisServer(workdir / "redis-0", password=password, args=sync)
        self.servers = [first] + [
            RedisServer(workdir / f"redis-{i}", password=password, args=[*sync, "--replicaof", "127.0.0.1", str(first.port)])
            for i in range(1, replicas + 1)
        ]
        self.sentinels = [
            SentinelServer(
                workdir / f"sentinel-{i}", first, self.service, down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms, password=sentinel_password,
            )
            for i in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.know(self.servers[1:], self.sentinels)

    def url(self, db: int = 9, query: str = "") -> str:
        """The ``redis+sentinel://`` URL of this group, with both passwords when it has them."""
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        options = [f"sentinel_password={self.sentinel_password}"] if self.sentinel_password else []
        options += [query] if query else []
        return f"redis+sentinel://{auth}{hosts}/{self.service}/{db}" + ("?" + "&".join(options) if options else "")

    def start(self, timeout: float = 30) -> None:
        for server in self.servers:
            server.start()
        # Until a write reaches every replica: after a diskless sync the master streams writes
        # to a replica only from its first acknowledgement, up to a second later, and a
        # failover before then would lose what the test wrote.
        master = self.servers[0].client()
        replicas = len(self.servers) - 1

        def replicated() -> bool:
            try:
                master.set("sentinel-group:probe", 1)
                master.delete("sentinel-group:probe")
            except redis.ResponseError:  # NOREPLICAS, with min-replicas-to-write
                return False
            return master.execute_command("WAIT", replicas, 100) == replicas

        wait_for(replicated, timeout, "a write on every replica")
        master.close()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        """Until every sentinel knows the two others and every replica as live: only then can
        they agree that the master is down and promote one."""

        def ready(sentinel: SentinelServer) -> bool:
            client = sentinel.client(socket_timeout=1)
            try:
                state = client.sentinel_master(self.service)
                replicas = client.sentinel_slaves(self.service)
            except redis.RedisError:
                return False
            finally:
                client.close()
            alive = [r for r in replicas if not (r["is_sdown"] or r["is_odown"])]
            return state["num-other-sentinels"] >= 2 and len(alive) == len(self.servers) - 1 and not state["is_sdown"]

        wait_for(lambda: all(ready(s) for s in self.sentinels), timeout, "the sentinels ready for a failover")

    def _named(self, sentinel: SentinelServer) -> int | None:
        """The port of the master ``sentinel`` names, as clients ask it (``SENTINEL MASTERS``:
        the failover's leader answers the old master until the failover ends)."""
        client = sentinel.client(socket_timeout=1)
        try:
            return int(client.sentinel_master(self.service)["port"])
        except redis.RedisError:
            return None
        finally:
            client.close()

    def master(self) -> RedisServer:
        """The server the sentinels name as master now (the first sentinel that answers)."""
        for sentinel in self.sentinels:
            port = self._named(sentinel)
            if port is not None:
                return next(s for s in self.servers if s.port == port)
        raise AssertionError("no sentinel answers")

    def wait_replicated(self, timeout: float = 30) -> None:
        """Until the replicas have every write the master took so far (its replication offset
        now): a failover from here on cannot lose those."""
        master = self.master()
        written = master.client().info("replication")["master_repl_offset"]
        for server in self.servers:
            if server is not master and server.proc is not None:
                replica = server.client()
                wait_for(lambda: replica.info("replication")["master_repl_offset"] >= written, timeout, "replicas caught up")  # noqa: B023
                replica.close()

    def failover(self) -> RedisServer:
        """Ask a sentinel for a coordinated failover (``SENTINEL FAILOVER``: the master is not
        down, and keeps running) once the replicas have every write so far, which Sentinel does
        not wait for; returns the master it replaces."""
        self.wait_replicated()
        old = self.master()
        client = self.sentinels[0].client(socket_timeout=5)
        try:
            client.execute_command("SENTINEL", "FAILOVER", self.service)
        finally:
            client.close()
        return old

    def wait_promoted(self, old: RedisServer, timeout: float = 30) -> RedisServer:
        """Until every sentinel names another master than ``old`` and it takes writes."""

        def promoted() -> RedisServer | None:
            names = {self._named(sentinel) for sentinel in self.sentinels}
            if len(names) != 1 or None in names or old.port in names:
                return None
            new = next(s for s in self.servers if s.port in names)
            client = new.client(socket_timeout=1)
            try:
                return new if client.info("replication")["role"] == "master" else None
            except redis.RedisError:
                return None
            finally:
                client.close()

        return wait_for(promoted, timeout, f"a master other than port {old.port}")

    def stop(self) -> None:
        for server in (*self.sentinels, *self.servers):
            server.stop()


class ClusterGroup:
    """A Redis Cluster of the test's own: ``masters`` redis-servers on free ports, the 16384
    slots split evenly between them in order, and ``replicas`` replicas of each master.

    Put together as ``redis-cli --cluster create`` does (slots, config epochs, MEET, then
    REPLICATE), but by the nodes' own commands, which take any number of masters: the CLI
    refuses fewer than 3. A replica takes over a master that does not answer for
    ``node_timeout_ms`` (Redis's default is 15 s).
    """

    SLOTS = 16384

    def __init__(self, workdir: Path, *, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 15000) -> None:
        count = masters * (1 + replicas)
        # The bus port given: by default it is the port + 10000, which a free port may exceed.
        self.bus_ports = [free_port() for _ in range(count)]
        self.servers = [
            RedisServer(workdir / f"node-{i}", args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus),
                "--cluster-node-timeout", str(node_timeout_ms), "--repl-diskless-sync-delay", "0",
            ])
            for i, bus in enumerate(self.bus_ports)
        ]
        self.masters = masters

    def url(self, query: str = "") -> str:
        """The ``redis+cluster://`` URL of this cluster."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.servers)
        return f"redis+cluster://{hosts}/" + (f"?{query}" if query else "")

    def start(self, timeout: float = 30) -> None:
        for server in self.servers:
            server.start()
        first = self.servers[0]
        for i, server in enumerate(self.servers):
            client = server.client()
            if i < self.masters:
                lo, hi = i * self.SLOTS // self.masters, (i + 1) * self.SLOTS // self.masters - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            if server is not first:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", first.port, self.bus_ports[0])
            client.close()
        wait_for(lambda: all(self._state(s, "cluster_known_nodes") == str(len(self.servers)) for s in self.servers),
                 timeout, "every node of the cluster known to every other")
        for i, server in enumerate(self.servers[self.masters:]):
            master = self.servers[i % self.masters].client()
            client = server.client()
            client.execute_command("CLUSTER", "REPLICATE", master.execute_command("CLUSTER", "MYID"))
            client.close()
            master.close()
        wait_for(lambda: all(self._state(s, "cluster_state") == "ok" for s in self.servers) and all(
            self._state(s, "master_link_status", "replication") == "up" for s in self.servers[self.masters:]
        ), timeout, "every node of the cluster ready")

    @staticmethod
    def _state(server: RedisServer, field: str, section: str | None = None) -> str | None:
        """A field of a node's ``CLUSTER INFO`` (or of an ``INFO`` section), None while it does
        not answer."""
        client = server.client(socket_timeout=1)
        try:
            if section is not None:
                return str(client.info(section).get(field))
            text = client.execute_command("CLUSTER", "INFO").decode()
        except redis.RedisError:
            return None
        finally:
            client.close()
        return dict(line.split(":", 1) for line in text.split() if ":" in line).get(field)

    def serving(self, key: str) -> RedisServer:
        """The master that serves ``key``'s slot now, as the live nodes tell it."""
        for server in self.servers:
            if server.proc is None:
                continue
            client = server.client(socket_timeout=1)
            try:
                slots = client.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            finally:
                client.close()
            slot = key_slot(key.encode())
            for lo, hi, master, *_ in slots:
                if lo <= slot <= hi:
                    return next(s for s in self.servers if s.port == int(master[1]))
        raise AssertionError("no node answers")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def add_stats(broker: Any, processed: int, failed: int) -> None:
    """Seed the processed/failed counters (total and today) as settled jobs would."""
    from django_async_jobs.broker.client import today

    for name, amount in (("processed", processed), ("failed", failed)):
        broker.redis.incrby(broker.keys.stat(name), amount)
        broker.redis.incrby(broker.keys.stat(name, today()), amount)


def fetch(broker: Any, process_id: str, queues: list[str], count: int) -> list[tuple[bytes, bytes]]:
    """One fetch as a worker makes it: by a registered process (a beat first, if it never beat),
    numbered after the last attempt Redis ran, whose reply it read."""
    if broker.redis.zscore(broker.keys.processes, process_id) is None:
        broker.heartbeat(process_id, {}, ttl=60)
    last = int(broker.redis.hget(broker.keys.fetched(process_id), "attempt") or 0)
    return broker.fetch(process_id, queues, count, attempt=last + 1, received=last)
