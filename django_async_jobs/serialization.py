"""Job arguments <-> JSON, and the payload format stored in Redis.

Strict by default, as Sidekiq's ``strict_args!``: anything that would not come back as the same
value (a model instance, a set, an object, a non-string dict key) is refused *at enqueue time*,
with the argument's name, instead of failing later in a worker. Opt-in tagged types carry
datetimes, decimals and UUIDs exactly.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django_async_jobs.conf import get_settings

TAG = "__aj__"
# Containers nested deeper than this in one argument are refused at enqueue: real data rarely
# goes past a handful of levels, and every reader of a payload recurses once per level.
MAX_DEPTH = 32

_SCALARS = (str, int, float, bool, type(None))


class SerializationError(TypeError):
    """An argument that cannot travel as JSON; the message names it and says what to pass."""


class MalformedPayload(ValueError):
    """A payload in Redis that is not a job this version can read."""


# Job ids sort in enqueue order: 12 hex digits of milliseconds since the epoch, then 12 of a
# per-process counter that starts at a random value. A queue keeps one score per priority and
# Redis orders equal scores by member, and every payload starts with its id, so the ids alone
# keep a queue first in, first out: no shared sequence to take at each enqueue. Inside one
# process the order is exact (the clock is never allowed to run backwards); between processes
# it is as good as their clocks agree. The counter's random start (reseeded in a forked child)
# keeps ids of different processes apart.
_id_counter: Any = None
_id_last_ms = 0
_id_head = f"{0:012x}"  # _id_last_ms in hex: formatted once per millisecond, not per id


def _seed_ids() -> None:
    global _id_counter
    _id_counter = itertools.count(int.from_bytes(os.urandom(6), "big") >> 1)


_seed_ids()
os.register_at_fork(after_in_child=_seed_ids)


def new_job_id() -> str:
    """A 24-hex-digit id, unique and increasing within the process (see above)."""
    global _id_last_ms, _id_head
    now = time.time_ns() // 1_000_000
    if now > _id_last_ms:
        _id_last_ms = now
        _id_head = f"{now:012x}"
    return f"{_id_head}{next(_id_counter) & 0xFFFFFFFFFFFF:012x}"


def _hint(value: Any, tagged: bool) -> str:
    from django.db.models import Model

    if isinstance(value, Model):
        return (
            f"a {type(value).__name__} model instance. Pass its primary key (obj.pk) and load "
            f"it in perform(): {type(value).__name__}.objects.get(pk=...)"
        )
    if isinstance(value, (set, frozenset)):
        return "a set, which JSON has no type for. Pass a list (sorted(...) keeps it stable)"
    if isinstance(value, (dt.datetime, dt.date, dt.time, dt.timedelta, Decimal, UUID)):
        if tagged:
            return f"a {type(value).__name__}"  # unreachable: tagged types are encoded
        return (
            f"a {type(value).__name__}. Set ASYNC_JOBS['TAGGED_ARGUMENTS'] = True to send it "
            f"exactly, or pass str(value) / value.isoformat()"
        )
    if isinstance(value, float):
        return "a float that is NaN or infinite, which JSON cannot carry"
    if isinstance(value, bytes):
        return "bytes. Decode them to a str, or base64-encode them"
    return f"a {type(value).__name__} object, which is not JSON. Pass plain values (ids, strings, numbers)"


def _clock(tag: str, value: dt.datetime | dt.time) -> dict[str, Any]:
    """An ISO string keeps the UTC offset but not the zone: a ``ZoneInfo`` travels by its key,
    and ``fold`` too, so a local time around a DST change comes back as the same instant."""
    out: dict[str, Any] = {TAG: tag, "v": value.isoformat()}
    if isinstance(value.tzinfo, ZoneInfo) and value.tzinfo.key:
        out["tz"] = value.tzinfo.key
    elif value.tzinfo is not None:
        offset = value.utcoffset()
        if offset is not None and offset.microseconds:
            # isoformat writes a sub-second offset, but fromisoformat (3.11, 3.12) drops it.
            out["off"] = [offset.days, offset.seconds, offset.microseconds]
    if value.fold:
        out["fold"] = 1
    return out


def _unclock(decoded: Any, value: dict[str, Any]) -> Any:
    tz = value.get("tz")
    if tz is not None:
        try:
            decoded = decoded.replace(tzinfo=ZoneInfo(tz))
        except (ZoneInfoNotFoundError, TypeError, ValueError, OSError) as exc:  # OSError: a name too long
            raise ValueError(f"unknown time zone {tz!r}") from exc
    off = value.get("off")
    if off is not None:
        decoded = decoded.replace(tzinfo=dt.timezone(dt.timedelta(days=off[0], seconds=off[1], microseconds=off[2])))
    if value.get("fold"):
        decoded = decoded.replace(fold=1)
    return decoded


def _encode_tagged(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _clock("datetime", value)
    if isinstance(value, dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return _clock("time", value)
    if isinstance(value, dt.timedelta):
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, Decimal):
        return {TAG: "decimal", "v": str(value)}
    if isinstance(value, UUID):
        return {TAG: "uuid", "v": str(value)}
    return None


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "decimal": Decimal,
    "uuid": UUID,
}


def dump_value(value: Any, tagged: bool, path: str, depth: int = 1) -> Any:
    """``value`` as JSON-ready data, or ``SerializationError`` naming ``path``; ``depth`` counts
    the containers ``value`` is in, the argument itself being 1."""
    kind = type(value)
    if kind in _SCALARS:
        if kind is float and (value != value or value in (float("inf"), float("-inf"))):
            raise SerializationError(f"{path} is {_hint(value, tagged)}.")
        return value
    if (kind is list or kind is tuple or kind is dict) and depth > MAX_DEPTH:
        # Before Python would hit its recursion limit (about 500 levels on 3.11), or a
        # container that holds itself.
        raise SerializationError(
            f"{path} is nested more than {MAX_DEPTH} lists or dicts deep; flatten the argument, "
            f"or store the data and pass its id."
        )
    if kind is list or kind is tuple:
        return [dump_value(item, tagged, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise SerializationError(
                    f"{path} has the key {key!r} ({type(key).__name__}); JSON object keys are "
                    f"strings, so it would come back as {str(key)!r}. Use string keys."
                )
            out[key] = dump_value(item, tagged, f"{path}[{key!r}]", depth + 1)
        if tagged and TAG in out:
            return {TAG: "dict", "v": out}
        return out
    if tagged:
        encoded = _encode_tagged(value)
        if encoded is not None:
            return encoded
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        # str/int subclasses (enums, lazy strings) would lose their type; say so.
        raise SerializationError(
            f"{path} is a {kind.__name__} (a {kind.__mro__[1].__name__} subclass), which would "
            f"come back as a plain {kind.__mro__[1].__name__}. Pass value.value or str(value)."
        )
    raise SerializationError(f"{path} is {_hint(value, tagged)}.")


def load_value(value: Any) -> Any:
    """Undo ``dump_value`` for tagged payloads."""
    kind = type(value)
    if kind is list:
        return [load_value(item) for item in value]
    if kind is dict:
        tag = value.get(TAG)
        if tag is not None:
            if tag == "dict":
                inner = value.get("v")
                if type(inner) is not dict:
                    raise MalformedPayload(f"bad tagged value: a tagged dict holds {type(inner).__name__}, not an object")
                return {k: load_value(v) for k, v in inner.items()}
            try:
                decoded = _DECODERS[tag](value["v"])
                if tag in ("datetime", "time"):
                    decoded = _unclock(decoded, value)
                return decoded
            # Decimal("x") raises InvalidOperation and timedelta(days=10**10) OverflowError: both
            # ArithmeticError. The message names the tag only: the value can be huge.
            except (KeyError, TypeError, ValueError, ArithmeticError, IndexError) as exc:
                raise MalformedPayload(f"bad tagged value of type {tag!r}: {exc}") from exc
        return {k: load_value(v) for k, v in value.items()}
    return value


def dump_arguments(
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    tagged: bool,
    names: Callable[[int], str],
) -> tuple[list[Any], dict[str, Any]]:
    """JSON-ready ``(args, kwargs)``; ``names(i)`` gives positional argument i's parameter name.

    Plain scalars, most arguments, pass as they are: no error path is built for them.
    """
    return (
        [
            value if _plain(value) else dump_value(value, tagged, f"argument {names(i)!r}")
            for i, value in enumerate(args)
        ],
        {
            key: value if _plain(value) else dump_value(value, tagged, f"argument {key!r}")
            for key, value in kwargs.items()
        },
    )


def _plain(value: Any) -> bool:
    kind = type(value)
    # value - value is 0.0 for a finite float; NaN and the infinities go on to dump_value's error.
    return kind is str or kind is int or kind is bool or value is None or (kind is float and value - value == 0.0)


def load_arguments(args: list[Any], kwargs: dict[str, Any], tagged: bool) -> tuple[list[Any], dict[str, Any]]:
    if not tagged:
        return args, kwargs
    return [load_value(a) for a in args], {k: load_value(v) for k, v in kwargs.items()}


# -- payloads -----------------------------------------------------------------------------------
# The job id comes first: the fetch script reads it from the payload's head without parsing JSON.
# Defaults (no kwargs, priority 0, first execution) are left out to keep payloads small.

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The same encoder built once: JSONEncoder.encode builds its C encoder on every call, a
# tenth of an enqueue's Python. No circular-reference check: serialize() has walked every
# argument before a payload is encoded.
_encode = (
    json.encoder.c_make_encoder(None, _refuse, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    if json.encoder.c_make_encoder is not None
    else None
)


def encode_payload(data: dict[str, Any]) -> str:
    return "".join(_encode(data, 0)) if _encode is not None else _dumps(data)


def encode_job(data: dict[str, Any]) -> str:
    """``encode_payload`` for an enqueue: a payload over ``MAX_PAYLOAD_BYTES`` is refused.

    The size is checked on the string already made: a str of n characters is at most 4n bytes
    in UTF-8, so only a payload longer than a quarter of the limit is encoded to count them.
    """
    text = encode_payload(data)
    limit = get_settings().max_payload_bytes
    if limit is not None and len(text) * 4 > limit:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise SerializationError(
                f"{data.get('job')}: the payload is {size:,} bytes, over ASYNC_JOBS['MAX_PAYLOAD_BYTES'] "
                f"({limit:,}). Store large data (a file, a row) and pass its id or path; or raise the limit."
            )
    return text
def payload_bytes(data: dict[str, Any]) -> bytes:
    """``encode_payload`` as the UTF-8 Redis keeps, for what a worker writes back (a retry, a
    dead record): redis-py sends bytes as they are, so this costs no more than a str would.

    A string read from a payload can hold a lone surrogate (a ``"\\ud800"`` escape), which UTF-8
    cannot carry; such a payload is written with its non-ASCII characters escaped, so it reads
    back the same instead of failing in the middle of a batch of settlements.
    """
    text = encode_payload(data)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


REQUIRED = {"jid": str, "job": str, "queue": str, "args": list}


def decode_payload(raw: bytes | str) -> dict[str, Any]:
    try:
        # From str: json.loads on bytes first sniffs the encoding, on every job.
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, RecursionError) as exc:  # invalid UTF-8 is a ValueError; deep nesting is not
        raise MalformedPayload(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedPayload("not a JSON object")
    for field, kind in REQUIRED.items():
        if not isinstance(data.get(field), kind):
            raise MalformedPayload(f"field {field!r} is missing or not a {kind.__name__}")
    if not isinstance(data.get("kwargs", {}), dict):
        raise MalformedPayload("field 'kwargs' is not an object")
    return data
