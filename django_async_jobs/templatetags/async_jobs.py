"""How the dashboard writes times and durations, in one place for every page and the JSON.

One format everywhere: ``2026-12-06 04:05:09`` (ISO-like, 24-hour, seconds, in the project's
``TIME_ZONE``), with the relative time beside it ("7 min 3 s ago"), and durations humanised
("7 min 3 s", "2 h 5 min", "3 d 4 h"). The views call the functions directly (building rows in
Python is cheaper than a filter per cell); templates ``{% load async_jobs %}``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()

_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


@register.filter
def duration(seconds: float | None) -> str:
    """``seconds`` as its two largest units ("7 min 3 s"); under a minute with one decimal
    below ten seconds ("4.2 s"), so a short runtime still reads as a measurement."""
    if seconds is None:
        return "-"
    size = abs(float(seconds))
    if size < 10:
        return f"{size:.1f} s"
    parts = []
    rest = int(size)
    for unit, length in _UNITS:
        count, rest = divmod(rest, length)
        if count or parts:
            parts.append(f"{count} {unit}")
        if len(parts) == 2:
            break
    return " ".join(part for part in parts if not part.startswith("0 ")) or "0 s"


@register.filter
def milliseconds(value: float | None) -> str:
    """A time in milliseconds as the metrics show it ("0.4 ms", "38 ms", "2 min 5 s")."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f} ms"
    if value < 1000:
        return f"{value:.0f} ms"
    return duration(value / 1000)


def relative(seconds_from_now: float) -> str:
    """"in 7 min 3 s" or "7 min 3 s ago"."""
    text = duration(seconds_from_now)
    return f"in {text}" if seconds_from_now > 0 else f"{text} ago"


def _datetime(value: datetime | float | int | None) -> datetime | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return value


def absolute(value: datetime | float | int | None) -> str:
    """``2026-12-06 04:05:09`` in ``TIME_ZONE`` ("-" for none)."""
    moment = _datetime(value)
    if moment is None:
        return "-"
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment)
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def moment_parts(value: datetime | float | int | None, now: float | None = None) -> tuple[str, str, str]:
    """(absolute, relative, ISO 8601) of a moment; ("-", "", "") for none."""
    moment = _datetime(value)
    if moment is None:
        return "-", "", ""
    now = time.time() if now is None else now
    return absolute(moment), relative(moment.timestamp() - now), moment.isoformat()


@register.filter
def moment(value: datetime | float | int | None) -> SafeString | str:
    """A ``<time>`` element: the absolute time, then the relative one."""
    text, ago, iso = moment_parts(value)
    if not iso:
        return "-"
    return format_html('<time datetime="{}" title="{}">{}</time> <span class="aj-muted">({})</span>', iso, ago, text, ago)


@register.simple_tag
def time_zone_name() -> str:
    """The zone every time on the page is written in."""
    return str(timezone.get_current_timezone_name())
