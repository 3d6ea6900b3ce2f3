"""``redis+sentinel://`` URLs: the master of a Redis Sentinel group, found by asking its sentinels.

redis-py's ``Sentinel`` does the failover work: every new connection asks the sentinels for the
master's address, and idle connections to an old master are closed once the address changes.
``Redis.from_url`` knows no such URL, so this module reads it into ``Sentinel(...)`` and
``master_for(...)`` arguments; the system check validates a URL with the same ``parse``.

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?option=value&...]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import redis
from redis.connection import SSLConnection
from redis.sentinel import Sentinel, SentinelManagedConnection

from django_async_jobs.broker import urls

SCHEME = "redis+sentinel"
PREFIX = SCHEME + "://"
DEFAULT_PORT = 26379
FORM = "redis+sentinel://[:password@]host:26379,host2:26379/service_name/0"


# Query options: name -> (how to read the value, who gets it). "both": the master's connections
# and the sentinels' (redis-py's Sentinel copies socket_* options so too); "master": master_for();
# "sentinel": Sentinel(sentinel_kwargs=...), without the "sentinel_"; "manager": Sentinel();
# "switch": TLS on a side; "tls": whichever side uses TLS.
OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "socket_timeout": (urls.seconds, "both"),
    "socket_connect_timeout": (urls.seconds, "both"),
    "socket_keepalive": (urls.boolean, "both"),
    "health_check_interval": (urls.count, "master"),
    "sentinel_username": (urls.text, "sentinel"),
    "sentinel_password": (urls.text, "sentinel"),
    "min_other_sentinels": (urls.count, "manager"),
    "ssl": (urls.boolean, "switch"),
    "sentinel_ssl": (urls.boolean, "switch"),
    "ssl_cert_reqs": (urls.cert_reqs, "tls"),
    "ssl_ca_certs": (urls.text, "tls"),
    "ssl_certfile": (urls.text, "tls"),
    "ssl_keyfile": (urls.text, "tls"),
    "ssl_check_hostname": (urls.boolean, "tls"),
}


@dataclass(frozen=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL read: whom to ask, for which master, and how to connect."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    master: dict[str, Any] = field(repr=False)  # master_for() keyword arguments
    sentinel: dict[str, Any] = field(repr=False)  # Sentinel(sentinel_kwargs=...)
    min_other_sentinels: int = 0


def parse(url: str, defaults: dict[str, Any] | None = None) -> SentinelURL:
    """Read ``url``; ``defaults`` are values of ``OPTIONS`` (timeouts) where the URL sets none.

    Plain string work, as ``conf.redact_url``: everything before the last ``@`` ahead of the
    query is credentials. ``ValueError`` says what is wrong and never quotes a password.
    """
    master, hostlist, path_text, query = urls.split(url, PREFIX)
    sentinels = [urls.address(item, DEFAULT_PORT, "sentinel", FORM) for item in hostlist.split(",")] if hostlist else []
    if not sentinels:
        raise ValueError(f"it names no sentinel: use {FORM}")
    path = [unquote(p) for p in path_text.removesuffix("/").split("/")]
    if not path[0] or len(path) > 2:
        raise ValueError(f"its path must be /service_name or /service_name/db, as in {FORM}")
    if len(path) == 2 and not (path[1].isascii() and path[1].isdigit()):
        raise ValueError(f"the database {path[1]!r} after the service name is not a number")
    options = urls.options(query, OPTIONS)
    for name, value in (defaults or {}).items():
        options.setdefault(name, value)
    sentinel: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    for name, value in options.items():
        where = OPTIONS[name][1]
        if where in ("both", "master"):
            master[name] = value
        if where == "both":
            sentinel[name] = value
        if where == "sentinel":
            sentinel[name.removeprefix("sentinel_")] = value
        if where == "tls":
            tls[name] = value
    master_tls = options.get("ssl", False)
    sentinel_tls = options.get("sentinel_ssl", master_tls)
    if tls and not (master_tls or sentinel_tls):
        raise ValueError(f"{', '.join(sorted(tls))} needs ssl=true (or sentinel_ssl=true)")
    if master_tls:
        master.update(ssl=True, **tls)
    if sentinel_tls:
        sentinel.update(ssl=True, **tls)
    return SentinelURL(
        sentinels, path[0], int(path[1]) if len(path) == 2 else 0, master, sentinel,
        options.get("min_other_sentinels", 0),
    )


class MasterConnection(SentinelManagedConnection):
    """redis-py's connection to a Sentinel group's master, made to leave an old master.

    * A connection dropped in the middle of a command (a retry) reconnects through the
      sentinels, as one taken from the pool does; recent redis-py (8.2) reconnects it to the
      address it had, which after a failover is the old master.
    * A reply that says the server is no master any more drops the connection, and is raised
      as a ``ConnectionError``, which is retried: READONLY (a replica now), UNBLOCKED (a
      blocked command cut by the demotion), as redis-py does, and NOREPLICAS too. A demoted
      master has no replica left, so with ``min-replicas-to-write`` it refuses writes for the
      seconds until Sentinel turns it into a replica. redis-py's own version of this method is
      skipped: in redis-py 5.0 it refuses the notify subscription's ``push_request``.
    """

    def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        if not self._sock:
            self.connect()
        super().send_packed_command(*args, **kwargs)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super(SentinelManagedConnection, self).read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if isinstance(exc, redis.ReadOnlyError) or str(exc).startswith(("NOREPLICAS", "UNBLOCKED")):
                self.disconnect()
                raise redis.ConnectionError(
                    f"the master is no master any more ({exc}); asking the sentinels again"
                ) from exc
            raise


class SSLMasterConnection(MasterConnection, SSLConnection):
    pass


def connect(url: str, **defaults: Any) -> redis.Redis:
    """The master's client for ``url``; ``defaults`` (timeouts) apply where the URL sets none."""
    config = parse(url, defaults)
    manager = Sentinel(
        config.sentinels, min_other_sentinels=config.min_other_sentinels, sentinel_kwargs=config.sentinel
    )
    master = dict(config.master)
    master["connection_class"] = SSLMasterConnection if master.pop("ssl", False) else MasterConnection
    # A command that meets a dropped connection, or a master that turned replica, is sent once
    # more on a fresh connection to the master the sentinels name then, as the direct path does.
    return manager.master_for(
        config.service, db=config.db, retry_on_error=[redis.ConnectionError, redis.TimeoutError], **master
    )
