"""Job arguments: strict JSON by default, exact round trips of tagged types when opted in."""

import datetime as dt
import json
import pickle
from decimal import Decimal
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import User
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_async_jobs import ApplicationJob, SerializationError
from django_async_jobs.serialization import (
    TAG,
    MalformedPayload,
    decode_payload,
    dump_arguments,
    dump_value,
    encode_payload,
    load_arguments,
    load_value,
)
from tests.helpers import wait_for
from tests.testapp.jobs import TaggedEchoJob


class TakesAnything(ApplicationJob):
    def perform(self, user=None, data=None, *rest, **options):
        pass


class TaggedByClass(ApplicationJob):
    tagged_arguments = True

    def perform(self, *values, **options):
        return values, options


class StrictByClass(ApplicationJob):
    tagged_arguments = False

    def perform(self, *values):
        pass


class Colour(str):
    pass


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((User(username="ann", pk=7),), {}, r"argument 'user' is a User model instance\. Pass its primary key \(obj\.pk\)"),
        ((None, {1, 2}), {}, r"argument 'data' is a set.*Pass a list"),
        ((), {"extra": object()}, r"argument 'extra' is a object object, which is not JSON"),
        ((None, {"ok": [1, {2: "x"}]}), {}, r"argument 'data'\['ok'\]\[1\] has the key 2 \(int\).*Use string keys"),
        ((float("nan"),), {}, r"argument 'user' is a float that is NaN or infinite"),
        ((None, None, float("-inf")), {}, r"argument '#2' is a float that is NaN or infinite"),
        ((dt.datetime(2024, 1, 1),), {}, r"argument 'user' is a datetime\. Set ASYNC_JOBS\['TAGGED_ARGUMENTS'\] = True"),
        ((), {"when": dt.date(2024, 1, 1)}, r"argument 'when' is a date\. Set ASYNC_JOBS\['TAGGED_ARGUMENTS'\]"),
        ((Decimal("1.5"),), {}, r"is a Decimal\. Set ASYNC_JOBS"),
        ((uuid4(),), {}, r"is a UUID\. Set ASYNC_JOBS"),
        ((b"raw",), {}, r"is bytes\. Decode them"),
        ((Colour("red"),), {}, r"is a Colour \(a str subclass\), which would come back as a plain str"),
    ],
)
def test_strict_mode_refuses_at_enqueue_time(broker, args, kwargs, message):
    with pytest.raises(SerializationError, match=message) as info:
        TakesAnything.perform_later(*args, **kwargs)
    assert str(info.value).startswith("TakesAnything.perform_later(): ")
    assert isinstance(info.value, TypeError)  # callers catching TypeError keep working
    assert broker.queue_size("default") == 0


def test_strict_mode_class_attribute_beats_the_setting(broker, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "TAGGED_ARGUMENTS": True}
    with pytest.raises(SerializationError, match="is a datetime"):
        StrictByClass.perform_later(dt.datetime(2024, 1, 1))
    assert broker.queue_size("default") == 0


def test_plain_json_arguments_are_stored_as_is(broker):
    TakesAnything.perform_later(None, {"a": [1, 2.5, "x", True, None]}, "more", key={"n": -1})
    data = decode_payload(broker.redis.zrange(broker.keys.queue("default"), 0, 0)[0])
    assert data["args"] == [None, {"a": [1, 2.5, "x", True, None]}, "more"]
    assert data["kwargs"] == {"key": {"n": -1}}
    assert "tagged" not in data


EXACT = [
    dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
    dt.datetime(2024, 5, 6, 7, 8, 9, 1),
    dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
    dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
    dt.date(1999, 12, 31),
    dt.time(23, 59, 59, 999999),
    dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=5))),
    dt.timedelta(days=-3, seconds=5, microseconds=7),
    Decimal("3.14159265358979323846264338327950288"),
    Decimal("-0.00"),
    Decimal("1E+3"),
    UUID("12345678-1234-5678-1234-567812345678"),
]


def same(a, b) -> bool:
    """Equal, of the same type, and spelled the same (Decimal('1.0') is not Decimal('1.00'))."""
    return a == b and repr(a) == repr(b)


def through_payload(job: ApplicationJob) -> ApplicationJob:
    """The trip a worker makes: serialize, JSON text, decode, rebuild."""
    job.queue_name = job.queue_name or "default"
    return type(job).deserialize(decode_payload(encode_payload(job.serialize())))


def test_tagged_class_attribute_round_trips_exactly(broker):
    nested = {TAG: "not a tag", "when": EXACT[0], "list": [EXACT[8], [EXACT[11]]]}
    job = TaggedByClass.perform_later(*EXACT, nested=nested)
    raw = broker.redis.zrange(broker.keys.queue("default"), 0, 0)[0]
    assert json.loads(raw)["tagged"] == 1
    rebuilt = TaggedByClass.deserialize(decode_payload(raw))
    assert rebuilt.job_id == job.job_id
    values, options = rebuilt.perform_now()
    assert len(values) == len(EXACT)
    for original, back in zip(EXACT, values, strict=True):
        assert same(original, back), (original, back)
    assert same(options["nested"], nested)
    assert options["nested"]["list"][1][0] == EXACT[11]


def test_tagged_setting_round_trips_exactly(broker, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "TAGGED_ARGUMENTS": True}
    job = TakesAnything(dt.datetime(2024, 2, 29, 12, tzinfo=ZoneInfo("America/New_York")), {"d": Decimal("0.1")})
    rebuilt = through_payload(job)
    assert same(rebuilt.arguments[0], job.arguments[0])
    assert rebuilt.arguments[0].tzinfo is ZoneInfo("America/New_York")  # the zone, not just an offset
    assert same(rebuilt.arguments[1], {"d": Decimal("0.1")})


def test_tagged_still_refuses_what_it_cannot_carry(broker):
    with pytest.raises(SerializationError, match=r"argument '#0' is a set"):
        TaggedByClass.perform_later({1})
    with pytest.raises(SerializationError, match="model instance"):
        TaggedByClass.perform_later(User(username="x"))


def test_a_worker_receives_tagged_arguments_exactly(worker, prefix, broker):
    key = f"{prefix}:echo"
    nested = [{TAG: "dict", "v": EXACT[0]}, {"k": (EXACT[4], EXACT[7])}]
    TaggedEchoJob.perform_later(key, *EXACT, nested=nested)
    raw = wait_for(lambda: broker.redis.lpop(key), 30, "the echo job")
    values, options = pickle.loads(raw)
    assert list(values) == EXACT and all(same(a, b) for a, b in zip(EXACT, values, strict=True))
    # Tuples travel as JSON arrays: they come back as lists.
    assert same(options["nested"], [{TAG: "dict", "v": EXACT[0]}, {"k": [EXACT[4], EXACT[7]]}])


def test_bad_tagged_values_are_malformed_payloads():
    with pytest.raises(MalformedPayload, match="bad tagged value"):
        load_value({TAG: "datetime", "v": "yesterday"})
    with pytest.raises(MalformedPayload, match="bad tagged value"):
        load_value({TAG: "no-such-type", "v": 1})
    with pytest.raises(MalformedPayload, match="bad tagged value"):
        load_value({TAG: "datetime", "v": "2024-01-01T00:00:00", "tz": "Nowhere/Atlantis"})


# -- property: dump then load is the identity ----------------------------------------------------

fixed_offsets = st.builds(
    dt.timezone, st.timedeltas(min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59))
)
zones = st.timezones() | fixed_offsets
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
tagged_scalars = (
    st.datetimes()
    | st.datetimes(timezones=zones)
    | st.dates()
    | st.times()
    | st.times(timezones=fixed_offsets)
    | st.timedeltas()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
)
keys = st.sampled_from([TAG, "v", "dict", ""]) | st.text(max_size=8)


def values(leaves):
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
        max_leaves=12,
    )


def assert_same(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert same(a, b), (a, b)
        if isinstance(a, (dt.datetime, dt.time)):
            assert a.tzinfo == b.tzinfo and a.fold == b.fold, (a, b)


def round_trip(args, kwargs, tagged):
    dumped = dump_arguments(args, kwargs, tagged, lambda i: f"#{i}")
    text = encode_payload({"args": dumped[0], "kwargs": dumped[1]})
    data = json.loads(text)
    return load_arguments(data["args"], data["kwargs"], tagged)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(values(json_scalars | tagged_scalars), max_size=4), st.dictionaries(st.text(max_size=5), values(json_scalars | tagged_scalars), max_size=3))
def test_tagged_round_trip_is_identity(args, kwargs):
    back_args, back_kwargs = round_trip(args, kwargs, tagged=True)
    assert_same(args, back_args)
    assert_same(kwargs, back_kwargs)


@settings(max_examples=80, deadline=None)
@given(st.lists(values(json_scalars), max_size=4), st.dictionaries(st.text(max_size=5), values(json_scalars), max_size=3))
def test_plain_round_trip_is_identity(args, kwargs):
    back_args, back_kwargs = round_trip(args, kwargs, tagged=False)
    assert_same(args, back_args)
    assert_same(kwargs, back_kwargs)


def test_a_sub_second_utc_offset_survives():
    """isoformat writes it, but fromisoformat on Python 3.11/3.12 drops it (found by the property test)."""
    tz = dt.timezone(dt.timedelta(hours=1, microseconds=1))
    for value in (dt.time(0, 0, tzinfo=tz), dt.datetime(2020, 1, 1, tzinfo=tz)):
        back = load_value(dump_value(value, True, "argument 'when'"))
        assert back == value and back.utcoffset() == value.utcoffset()
