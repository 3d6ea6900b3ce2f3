import os
import secrets
import shutil

import pytest

from django_async_jobs.broker.client import get_broker
from tests.helpers import ON_CLUSTER


def pytest_report_header(config):
    return "Redis: a 3-master cluster of the session's own (ASYNC_JOBS_TEST_CLUSTER=1)" if ON_CLUSTER else None


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-master Redis Cluster of the session's own (``ClusterGroup``), stopped at its end."""
    from tests.helpers import ClusterGroup

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the cluster tests start their own servers")
    group = ClusterGroup(tmp_path_factory.mktemp("cluster"))
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="session", autouse=ON_CLUSTER)
def on_cluster(request):
    """Under ASYNC_JOBS_TEST_CLUSTER=1, every broker of the session (and every worker
    subprocess, which reads REDIS_URL) talks to ``redis_cluster``."""
    from django.test import override_settings

    if not ON_CLUSTER:
        yield None
        return
    from django.conf import settings

    group = request.getfixturevalue("redis_cluster")
    url = group.url()
    previous = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = url
    override = override_settings(ASYNC_JOBS={**settings.ASYNC_JOBS, "REDIS_URL": url})
    override.enable()
    try:
        yield group
    finally:
        override.disable()
        if previous is None:
            del os.environ["REDIS_URL"]
        else:
            os.environ["REDIS_URL"] = previous


@pytest.fixture
def prefix(settings):
    """A fresh key prefix per test: tests never see each other's jobs, and all keys go after."""
    value = f"t{secrets.token_hex(4)}"
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "KEY_PREFIX": value}
    yield value
    get_broker().flush()


@pytest.fixture
def broker(prefix):
    return get_broker()


@pytest.fixture
def spawn(prefix, tmp_path):
    """Start ``runworker`` subprocesses for this test's prefix; any left running are killed after."""
    from tests.helpers import WorkerProcess, worker_env

    started = []

    def start(*args, redis_url=None, overrides=None):
        log = tmp_path / f"worker-{len(started)}.log"
        proc = WorkerProcess(list(args), worker_env(prefix, redis_url, overrides), log)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.cleanup()


@pytest.fixture
def worker(broker):
    """An in-process worker on the test's prefix, stopped after the test."""
    from django_async_jobs.worker.launcher import Worker

    w = Worker()
    w.start()
    yield w
    w.stop(timeout=2)


@pytest.fixture
def one_thread_worker(broker):
    """An in-process worker with a single processor thread: jobs run one after the other."""
    from django_async_jobs.worker.launcher import Worker

    w = Worker(concurrency=1)
    w.start()
    yield w
    w.stop(timeout=2)


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of this test's own; tests that kill Redis must never touch the shared one."""
    from tests.helpers import RedisServer

    if ON_CLUSTER:
        pytest.skip("not on a cluster: it runs on a redis-server of its own, as in the plain run")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(redis_server, settings, prefix):
    """The broker on a server of this test's own, so its command statistics count only this test."""
    original = settings.ASYNC_JOBS
    settings.ASYNC_JOBS = {**original, "REDIS_URL": redis_server.url}
    yield get_broker()
    settings.ASYNC_JOBS = original


@pytest.fixture
def sentinel_group(request, tmp_path):
    """A master, a replica and three sentinels of this test's own; passwords on both sides.
    Indirect parameters are more ``SentinelGroup`` options (``{"replicas": 2}``)."""
    import shutil

    from tests.helpers import SentinelGroup

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the Sentinel tests start their own servers")
    if ON_CLUSTER:
        pytest.skip("not on a cluster: it runs on Sentinel servers of its own, as in the plain run")
    options = {"password": "master-pw", "sentinel_password": "sentinel-pw", **getattr(request, "param", {})}
    group = SentinelGroup(tmp_path / "sentinel", **options)
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture
def sentinel_broker(sentinel_group, settings, prefix):
    """The broker on ``sentinel_group``'s master, found through its sentinels' URL."""
    original = settings.ASYNC_JOBS
    settings.ASYNC_JOBS = {**original, "REDIS_URL": sentinel_group.url()}
    yield get_broker()
    settings.ASYNC_JOBS = original
