"""What the multi-host URLs (``redis+sentinel://``, ``redis+cluster://``) share: a list of
``host:port`` addresses, credentials before the last ``@``, and query options read by type.

Plain string work, as ``conf.redact_url``: ``ValueError`` says what is wrong and never quotes a
password (option readers only quote the values of options that are no secret).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote


# Each reader raises ValueError with what the value must be.
def boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on", "t", "y"):
        return True
    if lowered in ("0", "false", "no", "off", "f", "n"):
        return False
    raise ValueError("true or false")


def seconds(value: str) -> float:
    try:
        amount = float(value)
    except ValueError:
        raise ValueError("a positive number of seconds") from None
    if not 0 < amount < float("inf"):
        raise ValueError("a positive number of seconds")
    return amount


def count(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise ValueError("an integer of at least 0")
    return int(value)


def cert_reqs(value: str) -> str:
    if value not in ("none", "optional", "required"):
        raise ValueError("none, optional or required")
    return value


def text(value: str) -> str:
    return value


def split(url: str, prefix: str) -> tuple[dict[str, Any], str, str, str]:
    """``url`` cut into its credentials (``username``/``password`` keyword arguments), host
    list, path and query; everything before the last ``@`` ahead of the query is credentials."""
    if not url.startswith(prefix):
        raise ValueError(f"it does not start with {prefix}")
    rest, _, query = url[len(prefix):].partition("?")
    userinfo, at, rest = rest.rpartition("@")
    hostlist, _, path = rest.partition("/")
    credentials: dict[str, Any] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            credentials["username"] = unquote(user)
        if colon:
            credentials["password"] = unquote(password)
    return credentials, hostlist, path, query


def options(query: str, known: dict[str, tuple[Callable[[str], Any], str]]) -> dict[str, Any]:
    """The query's options, each read by its reader in ``known`` (name -> (reader, where))."""
    found: dict[str, Any] = {}
    for name, raw in parse_qsl(query, keep_blank_values=True):
        if name not in known:
            raise ValueError(f"unknown option {name!r}; the options are {', '.join(sorted(known))}")
        if name in found:
            raise ValueError(f"the option {name!r} is given twice")
        try:
            found[name] = known[name][0](raw)
        except ValueError as exc:  # never a password: text options take any value
            raise ValueError(f"the option {name}={raw!r} must be {exc}") from None
    return found


def address(item: str, default_port: int, what: str, form: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[ipv6]:port``; ``what`` names the server in messages."""
    host, port = item, ""
    if item.startswith("["):  # [::1]:26379
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in item:
        host, _, port = item.rpartition(":")
    if not host:
        raise ValueError(f"the {what} address {item!r} has no host: use {form}")
    if port and not (port.isascii() and port.isdigit()):
        raise ValueError(f"the port of the {what} {item!r} is not a number")
    return unquote(host), int(port) if port else default_port
