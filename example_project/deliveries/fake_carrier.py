"""A fake carrier API on 127.0.0.1, with faults on demand: what the integration jobs call.

The jobs that talk to a carrier (``ExternalApiJob``, ``SyncExternalDataJob``, ``ManualRetryJob``)
make real HTTP requests; in the demo and the tests they go to this server, which answers like a
carrier would, or, when told to, slowly, with a 5xx, a 429, a 4xx, or by dropping the connection.
Standard library only, so it starts in a blink:

    python -m deliveries.fake_carrier --port 8765        # from example_project/
    python -m deliveries.fake_carrier --rate-limit 20    # and a 429 past 20 calls a second

The carrier's endpoints (``<tracking>`` is a task's tracking number):

    PUT  /shipments/<tracking>   book a shipment: 201 {"reference": "CR-..."}, the same one every time
    GET  /shipments/<tracking>   tracking data: 200 {"status": "in_transit", "location": ..., "events": [...]}
    PUT  /pickups/<tracking>     ask for a pickup: 200 {"pickup_at": "..."}
    GET  /health                 200 {"ok": true}

Controls (what ``CarrierControl`` sends):

    POST   /_faults     {"request": "PUT /shipments/T-1", "faults": ["error"], "then": "ok"}
                        the next requests of that method and path get these faults, one each,
                        then ``then`` for good ("ok" by default; "drop" makes it always fail)
    DELETE /_faults     forget every fault and the request log
    GET    /_requests   the log: [{"request": "PUT /shipments/T-1", "fault": "error", "status": 503}, ...]

Faults: ``slow`` (answer after ``--slow`` seconds, longer than any client's timeout), ``error``
(503), ``rate_limit`` (429 with ``Retry-After: 1``), ``client_error`` (422), ``not_found``
(404), ``gone`` (410), ``drop`` (close the connection without an answer).

Like a real partner, it can also enforce a rate limit of its own (``--rate-limit N``): past N
calls to its endpoints in one wall-clock second, it answers 429 with ``Retry-After: 1``, logged
with the fault ``over_limit``. The jobs stay under it with a shared ``RateLimit``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib import request as urllib_request

FAULTS = ("ok", "slow", "error", "rate_limit", "client_error", "not_found", "gone", "drop")
FAULT_STATUS = {"error": 503, "rate_limit": 429, "client_error": 422, "not_found": 404, "gone": 410}
FAULT_MESSAGE = {
    "error": "carrier temporarily unavailable",
    "rate_limit": "too many requests",
    "client_error": "address not serviceable",
    "not_found": "unknown tracking number",
    "gone": "shipment was cancelled",
}


class RateCounter:
    """Calls per wall-clock second, as a partner counts them: past ``limit``, the call is refused."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._second = 0
        self._count = 0

    def allows(self) -> bool:
        if self.limit is None:
            return True
        second = int(time.time())
        with self._lock:
            if second != self._second:
                self._second, self._count = second, 0
            self._count += 1
            return self._count <= self.limit


class FaultPlan:
    """Per request line (``"PUT /shipments/T-1"``): faults to use once each, then one for good."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._once: dict[str, deque[str]] = {}
        self._then: dict[str, str] = {}
        self.log: list[dict[str, Any]] = []

    def plan(self, request: str, faults: list[str], then: str = "ok") -> None:
        unknown = [f for f in [*faults, then] if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {list(FAULTS)}")
        with self._lock:
            self._once[request] = deque(faults)
            self._then[request] = then

    def next(self, request: str) -> str:
        with self._lock:
            pending = self._once.get(request)
            return pending.popleft() if pending else self._then.get(request, "ok")

    def record(self, request: str, fault: str, status: int | None) -> None:
        with self._lock:
            self.log.append({"request": request, "fault": fault, "status": status})

    def reset(self) -> None:
        with self._lock:
            self._once.clear()
            self._then.clear()
            self.log.clear()


class CarrierHandler(BaseHTTPRequestHandler):
    server: FakeCarrier
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log (``GET /_requests``) says what happened."""

    # -- plumbing ----------------------------------------------------------------------------

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _send(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        body = self._body()
        if self.path.startswith("/_"):
            self._control(method, body)
        else:
            self._carrier(method)

    # -- controls ----------------------------------------------------------------------------

    def _control(self, method: str, body: Any) -> None:
        plan = self.server.faults
        if (method, self.path) == ("POST", "/_faults"):
            try:
                plan.plan(body["request"], list(body.get("faults", [])), body.get("then", "ok"))
            except (KeyError, TypeError, ValueError) as exc:
                self._send(400, {"error": str(exc)})
                return
            self._send(200, {"ok": True})
        elif (method, self.path) == ("DELETE", "/_faults"):
            plan.reset()
            self._send(200, {"ok": True})
        elif (method, self.path) == ("GET", "/_requests"):
            self._send(200, plan.log)
        else:
            self._send(404, {"error": f"no control {method} {self.path}"})

    # -- the carrier -------------------------------------------------------------------------

    def _carrier(self, method: str) -> None:
        request = f"{method} {self.path}"
        if request == "GET /health":
            self._send(200, {"ok": True})
            return
        parts = self.path.strip("/").split("/")
        answer = ENDPOINTS.get((method, parts[0])) if len(parts) == 2 and parts[1] else None
        if answer is None:
            self._send(404, {"error": f"no endpoint {request}"})
            return
        if not self.server.rate.allows():
            self.server.faults.record(request, "over_limit", 429)
            self._send(429, {"error": "rate limit exceeded"}, {"Retry-After": "1"})
            return
        fault = self.server.faults.next(request)
        if fault == "drop":
            self.server.faults.record(request, fault, None)
            self.close_connection = True
            return
        headers = None
        if fault in FAULT_STATUS:
            status, data = FAULT_STATUS[fault], {"error": FAULT_MESSAGE[fault]}
            headers = {"Retry-After": "1"} if status == 429 else None
        else:
            status, data = answer(parts[1])
        self.server.faults.record(request, fault, status)  # when it comes: a slow one's client may leave
        if fault == "slow":
            time.sleep(self.server.slow_seconds)
        self._send(status, data, headers)


def _reference(tracking: str) -> str:
    return "CR-" + hashlib.sha256(tracking.encode()).hexdigest()[:8].upper()


def book(tracking: str) -> tuple[int, dict[str, Any]]:
    """The same reference for the same tracking number: booking twice is harmless."""
    return 201, {"tracking_number": tracking, "reference": _reference(tracking)}


def tracking(tracking: str) -> tuple[int, dict[str, Any]]:
    return 200, {
        "tracking_number": tracking,
        "reference": _reference(tracking),
        "status": "in_transit",
        "location": "Hub Rotterdam",
        "events": [{"at": datetime.now(UTC).isoformat(timespec="seconds"), "what": "arrived at hub"}],
    }


def pickup(tracking: str) -> tuple[int, dict[str, Any]]:
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    return 200, {"tracking_number": tracking, "pickup_at": at.isoformat()}


ENDPOINTS = {("PUT", "shipments"): book, ("GET", "shipments"): tracking, ("PUT", "pickups"): pickup}


class FakeCarrier(ThreadingHTTPServer):
    """The server; ``start()`` runs it in a thread (tests), ``serve_forever()`` in the foreground."""

    daemon_threads = True
    allow_reuse_address = True
    # A burst of clients (the rate-limit test sends 30 at once) must queue, not overflow the
    # listen backlog (5 by default) and wait out a SYN retry on a busy machine.
    request_queue_size = 128

    def __init__(self, port: int = 0, slow_seconds: float = 3.0, rate_limit: int | None = None) -> None:
        super().__init__(("127.0.0.1", port), CarrierHandler)
        self.faults = FaultPlan()
        self.slow_seconds = slow_seconds
        self.rate = RateCounter(rate_limit)
        self._thread: threading.Thread | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a slow answer is expected here; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FakeCarrier:
        self._thread = threading.Thread(target=self.serve_forever, name="fake-carrier", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class CarrierControl:
    """The controls of a running fake carrier, over HTTP: for the demo (another process) and tests."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, data: Any = None) -> Any:
        body = json.dumps(data).encode() if data is not None else None
        req = urllib_request.Request(
            self.url + path, data=body, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib_request.urlopen(req, timeout=5) as response:
            return json.loads(response.read())

    def plan(self, request: str, *faults: str, then: str = "ok") -> None:
        """``plan("PUT /shipments/T-1", "error")``: the next such request gets a 503, then all is well."""
        self._call("POST", "/_faults", {"request": request, "faults": list(faults), "then": then})

    def reset(self) -> None:
        self._call("DELETE", "/_faults")

    def requests(self, request: str | None = None) -> list[dict[str, Any]]:
        """What the carrier saw, oldest first; only ``request`` lines when given."""
        log = self._call("GET", "/_requests")
        return [entry for entry in log if request is None or entry["request"] == request]

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "/health").get("ok"))
        except OSError:
            return False


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake carrier API with faults on demand.")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--slow", type=float, default=3.0, help="seconds a 'slow' answer takes (default 3)")
    parser.add_argument(
        "--rate-limit", type=int, default=None, metavar="N", help="answer 429 past N calls in one second (default: none)"
    )
    args = parser.parse_args()
    server = FakeCarrier(args.port, args.slow, args.rate_limit)
    print(f"fake carrier on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
