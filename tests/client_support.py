"""Real sockets for the client's tests: a TCP proxy that cuts connections where a test says, and a
scripted HTTP server that fails, drops, hangs or answers on cue and counts what it was sent."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

from attrs import define, field, frozen

# Given every response byte seen so far on a connection: how many to pass on before cutting it
# (None: not yet).
CutRule = Callable[[bytes], int | None]


def cut_after_nth(marker: bytes, n: int, extra: int) -> CutRule:
    """Cut `extra` bytes past the start of the `n`th `marker` (mid-message for an SSE frame)."""

    def rule(seen: bytes) -> int | None:
        at = -1
        for _ in range(n):
            at = seen.find(marker, at + 1)
            if at < 0:
                return None
        return at + extra if len(seen) >= at + extra else None

    return rule


def cut_at_once(seen: bytes) -> int | None:
    """Pass nothing of the answer on: the request was served, its answer never arrives."""
    return 0


RELAY = "relay"  # pass everything on
REFUSE = "refuse"  # close the connection as soon as it is accepted
Plan = CutRule | str


@define
class Connection:
    request: bytearray = field(factory=bytearray)
    cut: bool = False


@define
class CuttingProxy:
    """Relays TCP to `upstream`; the nth connection follows `plans[n]` (a cut rule, `REFUSE`),
    connections beyond the plans are relayed whole."""

    upstream: tuple[str, int]
    plans: list[Plan]
    connections: list[Connection] = field(factory=list)
    _listener: socket.socket = field(factory=lambda: socket.socket(), init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def requests(self) -> list[str]:
        with self._lock:
            return [bytes(c.request).decode("latin-1") for c in self.connections]

    def start(self) -> None:
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                n = len(self.connections)
                conn = Connection()
                self.connections.append(conn)
            plan = self.plans[n] if n < len(self.plans) else RELAY
            if plan == REFUSE:
                client.close()
                continue
            rule = None if isinstance(plan, str) else plan
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._up, args=(client, upstream, conn), daemon=True).start()
            threading.Thread(
                target=self._down, args=(upstream, client, conn, rule), daemon=True
            ).start()

    def _up(self, client: socket.socket, upstream: socket.socket, conn: Connection) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    conn.request.extend(data)
                upstream.sendall(data)
        except OSError:
            pass
        _close(upstream)

    def _down(
        self,
        upstream: socket.socket,
        client: socket.socket,
        conn: Connection,
        rule: CutRule | None,
    ) -> None:
        seen = b""
        sent = 0
        try:
            while data := upstream.recv(65536):
                seen += data
                cut = rule(seen) if rule is not None else None
                if cut is not None:
                    client.sendall(seen[sent:cut])
                    conn.cut = True
                    break
                client.sendall(data)
                sent = len(seen)
        except OSError:
            pass
        _close(client)
        _close(upstream)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextmanager
def cutting_proxy(url: str, plans: Sequence[Plan]) -> Iterator[CuttingProxy]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    proxy = CuttingProxy((host, int(port)), list(plans))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


# --------------------------------------------------------------------------- scripted server


@frozen
class Answer:
    """An answer; with `then_hang_s`, the connection stays open and silent that long after it
    (no Content-Length: the body has no end the client could see)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    then_hang_s: float = 0.0


@frozen
class Drop:
    """Read the request, then close the connection without a word."""


@frozen
class Hang:
    """Read the request, then say nothing for `seconds`."""

    seconds: float


Action = Answer | Drop | Hang


@frozen
class Received:
    at: float  # time.monotonic()
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def error_answer(status: int, code: str, request_id: str = "", **headers: str) -> Answer:
    body = json.dumps({"code": code, "message": f"{code} (scripted)", "request_id": request_id})
    return Answer(status, body.encode(), tuple(headers.items()))


@define
class ScriptedServer:
    """An HTTP/1.1 server on a real socket: the nth request gets `script[n]` (the last action
    repeats), every request is recorded, each connection is closed after its answer."""

    script: list[Action]
    received: list[Received] = field(factory=list)
    _listener: socket.socket = field(factory=lambda: socket.socket(), init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            request = _read_request(sock)
            if request is None:
                return
            with self._lock:
                n = len(self.received)
                self.received.append(request)
            action = self.script[min(n, len(self.script) - 1)]
            if isinstance(action, Hang):
                time.sleep(action.seconds)
            elif isinstance(action, Answer):
                sock.sendall(_response(action))
                time.sleep(action.then_hang_s)
        except OSError:
            pass
        finally:
            _close(sock)


def _read_request(sock: socket.socket) -> Received | None:
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Received(time.monotonic(), method, path, headers, body)


def _response(answer: Answer) -> bytes:
    reason = {200: "OK", 202: "Accepted"}.get(answer.status, "Status")
    head = [f"HTTP/1.1 {answer.status} {reason}", "Connection: close"]
    if not answer.then_hang_s:
        head.append(f"Content-Length: {len(answer.body)}")
    if not any(k.lower() == "content-type" for k, _ in answer.headers):
        head.append("Content-Type: application/json")
    head += [f"{k}: {v}" for k, v in answer.headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + answer.body


@contextmanager
def scripted_server(*script: Action) -> Iterator[ScriptedServer]:
    server = ScriptedServer(list(script))
    server.start()
    try:
        yield server
    finally:
        server.stop()
