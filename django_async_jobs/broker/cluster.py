"""``redis+cluster://`` URLs: a Redis Cluster, found through any of the nodes listed.

redis-py's ``RedisCluster`` does the cluster work: it learns which master serves which slot
from the first node that answers, sends each command to the master of its keys' slot, and
follows ``MOVED``/``ASK`` after a failover or a resharding. It needs every key of a Lua step in
one slot: ``keys.Keys.cluster`` puts one hash tag into every key for that. ``RedisCluster``
knows no list of hosts in a URL, so this module reads one into its arguments; the system check
validates a URL with the same ``parse``.

    redis+cluster://[[user]:password@]host[:port][,host[:port]...][/][?option=value&...]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

from django_async_jobs.broker import urls

SCHEME = "redis+cluster"
PREFIX = SCHEME + "://"
DEFAULT_PORT = 6379
FORM = "redis+cluster://[:password@]host:7000,host2:7001,host3:7002/"
# CLUSTER_PARTITIONS' ceiling: a worker fetches, polls and beats on every partition, so their
# count is that many round trips per beat; far more than any cluster has masters.
MAX_PARTITIONS = 64

# Query options: name -> (how to read the value, where it goes). "node": every node's
# connections; "tls": the same, and only with ssl=true.
OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "socket_timeout": (urls.seconds, "node"),
    "socket_connect_timeout": (urls.seconds, "node"),
    "socket_keepalive": (urls.boolean, "node"),
    "health_check_interval": (urls.count, "node"),
    "ssl": (urls.boolean, "node"),
    "ssl_cert_reqs": (urls.cert_reqs, "tls"),
    "ssl_ca_certs": (urls.text, "tls"),
    "ssl_certfile": (urls.text, "tls"),
    "ssl_keyfile": (urls.text, "tls"),
    "ssl_check_hostname": (urls.boolean, "tls"),
}


@dataclass(frozen=True)
class ClusterURL:
    """A ``redis+cluster://`` URL read: the nodes to start from, and how to connect to any node."""

    nodes: list[tuple[str, int]]
    options: dict[str, Any] = field(repr=False)  # RedisCluster() keyword arguments


def parse(url: str, defaults: dict[str, Any] | None = None) -> ClusterURL:
    """Read ``url``; ``defaults`` are values of ``OPTIONS`` (timeouts) where the URL sets none.
    ``ValueError`` says what is wrong and never quotes a password."""
    options, hostlist, path, query = urls.split(url, PREFIX)
    nodes = [urls.address(item, DEFAULT_PORT, "node", FORM) for item in hostlist.split(",")] if hostlist else []
    if not nodes:
        raise ValueError(f"it names no node: use {FORM}")
    if path not in ("", "0"):  # a cluster has database 0 only
        raise ValueError(f"a cluster has no databases: its path must be / or nothing, as in {FORM}")
    given = urls.options(query, OPTIONS)
    tls = sorted(name for name in given if OPTIONS[name][1] == "tls")
    if tls and not given.get("ssl"):
        raise ValueError(f"{', '.join(tls)} needs ssl=true")
    options.update(given)
    for name, value in (defaults or {}).items():
        options.setdefault(name, value)
    return ClusterURL(nodes, options)


def connect(url: str, **defaults: Any) -> RedisCluster:
    """The cluster's client for ``url``; ``defaults`` (timeouts) apply where the URL sets none.

    ``RedisCluster`` asks a node for the slot map at once: a cluster that none of the nodes
    listed answers for raises ``redis.ConnectionError`` here, as a first command would.
    """
    config = parse(url, defaults)
    try:
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in config.nodes], **config.options)
    except RedisClusterException as exc:
        raise redis.ConnectionError(str(exc)) from exc
