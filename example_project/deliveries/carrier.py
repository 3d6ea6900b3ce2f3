"""The carrier's HTTP API as the jobs see it: three calls, and one exception class per kind of
failure, so that a job's ``retry_on`` / ``discard_on`` rules can treat each kind its own way.

Where it is and how long to wait for it come from ``settings.CARRIER_API`` (``URL``,
``TIMEOUT``); ``deliveries.fake_carrier`` plays the carrier in the demo and the tests.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote, urlsplit

from django.conf import settings


class CarrierError(Exception):
    """Something went wrong talking to the carrier."""


class CarrierUnreachable(CarrierError, ConnectionError):
    """No connection: refused, reset, timed out while connecting, or closed without an answer."""


class CarrierTimeout(CarrierError, TimeoutError):
    """Connected, but no answer within ``CARRIER_API["TIMEOUT"]`` seconds."""


class CarrierServerError(CarrierError):
    """A 5xx: the carrier has trouble of its own; the same request may work later."""


class CarrierRateLimited(CarrierError):
    """A 429; ``retry_after`` is the carrier's ``Retry-After`` in seconds, if it sent one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CarrierClientError(CarrierError):
    """Another 4xx: the carrier refuses this request, and will refuse it again."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _request(method: str, path: str) -> dict[str, Any]:
    config = settings.CARRIER_API
    url = urlsplit(config["URL"])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=float(config["TIMEOUT"]))
    where = f"carrier {method} {path}"
    try:
        try:
            connection.connect()
        except OSError as exc:
            raise CarrierUnreachable(f"{where}: cannot connect to {url.netloc} ({exc})") from exc
        try:
            connection.request(method, path, headers={"Accept": "application/json"})
            response = connection.getresponse()
            body = response.read()
        except TimeoutError as exc:
            raise CarrierTimeout(f"{where}: no answer within {config['TIMEOUT']}s") from exc
        except (http.client.HTTPException, OSError) as exc:
            raise CarrierUnreachable(f"{where}: connection lost ({type(exc).__name__})") from exc
    finally:
        connection.close()
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    message = f"{where}: {response.status} {data.get('error', response.reason)}"
    if response.status == 429:
        retry_after = response.getheader("Retry-After")
        raise CarrierRateLimited(message, float(retry_after) if retry_after else None)
    if response.status >= 500:
        raise CarrierServerError(message)
    if response.status >= 400:
        raise CarrierClientError(message, response.status)
    return data


def book_shipment(tracking_number: str) -> str:
    """Book the shipment; the carrier's reference. Booking twice returns the same reference."""
    return _request("PUT", f"/shipments/{quote(tracking_number)}")["reference"]


def fetch_tracking(tracking_number: str) -> dict[str, Any]:
    """Where the parcel is: ``{"status", "location", "events", ...}``."""
    return _request("GET", f"/shipments/{quote(tracking_number)}")


def request_pickup(tracking_number: str) -> str:
    """Ask for a pickup; when it will happen (ISO 8601)."""
    return _request("PUT", f"/pickups/{quote(tracking_number)}")["pickup_at"]
