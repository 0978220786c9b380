"""An HTTP proxy that fails a share of requests, as a busy object store does under load.

`python -m tests.fault_proxy --port P --upstream http://127.0.0.1:Q [--failure-rate 0.2]
[--seed 0] [--forbid TEXT] [--refuse TEXT] [--hold TEXT]`: every request is forwarded to the
upstream API server (moto's S3 server, gcp-storage-emulator) unless the seeded draw for it fails
it: three failures in four are answered 503 SlowDown, the fourth drops the connection before
any answer (the request body read first, as a server that gave up would). The draws come from
one seeded generator in the order requests arrive. Whatever the draw, a request whose method
and path (`GET /bucket/key?query`, unquoted) contains a --forbid text is answered 403, one with
a --refuse text 503, and one with a --hold text waits (up to 60 s) before it is forwarded, so
that a test can act while a run is at that request. `GET /_fault_proxy/stats` answers what was
forwarded and failed, and the requests held now (in all, and by --hold text), as JSON. Upstream
addresses in `Location` headers (resumable uploads) are rewritten to the proxy's. Listens on
127.0.0.1 only.
"""

import argparse
import http.client
import json
import random
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATS_PATH = "/_fault_proxy/stats"
SLOW_DOWN_SHARE = 0.75  # of the failures; the rest drop the connection
# Headers that belong to one hop, not to the request or answer: never forwarded.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
FORBIDDEN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)


HOLD_S = 60.0


class FaultPlan:
    """The seeded draw of each request's fate, and the counts of what happened."""

    def __init__(
        self, failure_rate: float, seed: int, forbid: list[str], refuse: list[str], hold: list[str]
    ):
        self._rate = failure_rate
        self._random = random.Random(seed)
        self._forbid, self._refuse, self.hold = forbid, refuse, hold
        self._lock = threading.Lock()
        self.stats = dict.fromkeys(
            ("requests", "forwarded", "slow_down", "dropped", "forbidden", "refused", "held"), 0
        )
        self.holding: dict[str, int] = {}  # requests held now, by --hold text

    def held_by(self, request: str) -> list[str]:
        return [text for text in self.hold if text in request]

    def change_held(self, texts: list[str], change: int) -> None:
        with self._lock:
            self.stats["held"] += change
            for text in texts:
                self.holding[text] = self.holding.get(text, 0) + change

    def fate(self, request: str) -> str:
        with self._lock:
            self.stats["requests"] += 1
            if any(text in request for text in self._forbid):
                fate = "forbidden"
            elif any(text in request for text in self._refuse):
                fate = "refused"
            elif self._random.random() >= self._rate:
                fate = "forwarded"
            else:
                fate = "slow_down" if self._random.random() < SLOW_DOWN_SHARE else "dropped"
            self.stats[fate] += 1
            return fate


class FaultyProxy(BaseHTTPRequestHandler):
    """Answers each request as its FaultPlan says: forwarded to the upstream server, failed
    with a 503 SlowDown or a 403, or its connection dropped."""

    protocol_version = "HTTP/1.1"
    upstream: urllib.parse.SplitResult
    plan: FaultPlan

    def log_message(self, format, *args):
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        """Send an answer; to HEAD, with the length of what a GET would give."""
        self.send_response(status)
        length = str(len(body))
        for name, value in headers:
            if name.lower() == "content-length" and self.command == "HEAD":
                length = value
            elif name.lower() not in HOP_HEADERS | {"content-length"}:
                self.send_header(name, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        body = self._body()
        plan = self.plan
        if self.path == STATS_PATH:
            stats = json.dumps({**plan.stats, "holding": plan.holding}).encode()
            self._answer(200, stats, [("Content-Type", "application/json")])
            return
        request = f"{self.command} {urllib.parse.unquote(self.path)}"
        fate = plan.fate(request)
        if fate == "dropped":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if fate != "forwarded":
            status, error = (403, FORBIDDEN) if fate == "forbidden" else (503, SLOW_DOWN)
            self._answer(status, error, [("Content-Type", "application/xml")])
            return
        held_by = plan.held_by(request)
        if held_by:
            plan.change_held(held_by, 1)
            time.sleep(HOLD_S)
            plan.change_held(held_by, -1)
        self._forward(body)

    def _forward(self, body: bytes) -> None:
        """The upstream server's answer to the request, its redirects pointed at the proxy."""
        upstream = self.upstream
        connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
        try:
            headers = {
                name: value
                for name, value in self.headers.items()
                if name.lower() not in HOP_HEADERS | {"content-length"}
            }
            headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            own = f"127.0.0.1:{self.server.server_address[1]}"
            answer = [
                (name, value.replace(upstream.netloc, own) if name == "Location" else value)
                for name, value in response.getheaders()
            ]
            self._answer(response.status, response.read(), answer)
        finally:
            connection.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle


def make_handler(upstream: urllib.parse.SplitResult, plan: FaultPlan) -> type:
    """A FaultyProxy for one upstream server and plan."""
    return type("PlannedFaultyProxy", (FaultyProxy,), {"upstream": upstream, "plan": plan})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--failure-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forbid", action="append", default=[], help="answer 403 to these")
    parser.add_argument("--refuse", action="append", default=[], help="answer 503 to these")
    parser.add_argument("--hold", action="append", default=[], help="hold these a while")
    args = parser.parse_args()
    plan = FaultPlan(args.failure_rate, args.seed, args.forbid, args.refuse, args.hold)
    handler = make_handler(urllib.parse.urlsplit(args.upstream), plan)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
