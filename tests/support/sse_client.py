"""A small Server-Sent-Events client for tests: real sockets, parsed events.

It speaks to real servers (Django's threaded test server, uvicorn,
gunicorn) the way a browser's EventSource does, and exposes what the tests
assert on: the status, the headers, each event's id/type/data, and the
comment lines (heartbeats) that EventSource hides.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

_LINE_END = re.compile(rb"\r\n|\r|\n")

__all__ = ["Event", "SSEClient", "parse_events"]


@dataclass
class Event:
    """One SSE event, or a comment (``event == ""`` and ``comment`` set)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    comment: str | None = None
    retry: int | None = None
    fields: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class _Parser:
    """Incremental SSE parsing (the HTML spec's rules, simplified for tests)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.current = Event()
        self.data: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        self.buffer += chunk
        events = []
        while True:
            # A line ends at CRLF, LF or a lone CR (a CR last in the buffer
            # may be the first half of a CRLF still on its way).
            match = _LINE_END.search(self.buffer)
            if match is None or (match.group() == b"\r" and match.end() == len(self.buffer)):
                break
            line, self.buffer = self.buffer[: match.start()], self.buffer[match.end() :]
            text = line.decode("utf-8")
            if not text:
                if self.current.fields:
                    self.current.data = "\n".join(self.data)
                    events.append(self.current)
                self.current, self.data = Event(), []
                continue
            if text.startswith(":"):
                events.append(Event(event="", comment=text[1:].strip()))
                continue
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            self.current.fields.append(name)
            if name == "data":
                self.data.append(value)
            elif name == "event":
                self.current.event = value
            elif name == "id":
                self.current.id = value
            elif name == "retry":
                self.current.retry = int(value)
        return events


def parse_events(body: bytes) -> list[Event]:
    """Every complete event (and comment) in ``body``."""
    return _Parser().feed(body)


class SSEClient:
    """One GET of an SSE endpoint over a raw socket; read events until a deadline.

    A raw socket, not http.client: reads must time out and go on, which a
    buffered file object does not survive. Chunked bodies (uvicorn,
    gunicorn) and close-delimited ones (Django's test server) both work.
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 10):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._raw = b""
        self.ended = False
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._raw:
            if not self._recv(deadline):
                raise AssertionError(f"no response headers from {url}: {self._raw!r}")
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self._parser = _Parser()
        self._pending: list[Event] = []
        self.body = b""
        self._decode()

    def _recv(self, deadline: float) -> bool:
        """Read what arrives before ``deadline``; False once the peer closed."""
        self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return time.monotonic() < deadline
        except OSError:
            chunk = b""
        if not chunk:
            self.ended = True
            return False
        self._raw += chunk
        return True

    def _decode(self) -> None:
        """Move complete body bytes from the raw buffer to the parser."""
        data = b""
        if not self.chunked:
            data, self._raw = self._raw, b""
        else:
            while b"\r\n" in self._raw:
                size_line, rest = self._raw.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    self.ended = True
                    self._raw = b""
                    break
                if len(rest) < size + 2:
                    break
                data += rest[:size]
                self._raw = rest[size + 2 :]
        self.body += data
        self._pending += self._parser.feed(data)

    def events(self, until: float) -> list[Event]:
        """Events received within ``until`` seconds (or until the stream ends)."""
        deadline = time.monotonic() + until
        while time.monotonic() < deadline and not self.ended:
            self._recv(deadline)
            self._decode()
        events, self._pending = self._pending, []
        return events

    def wait_for(self, predicate: Any, timeout: float = 10) -> list[Event]:
        """Read until an event satisfies ``predicate``; return everything read."""
        deadline = time.monotonic() + timeout
        seen: list[Event] = []
        while True:
            while self._pending:
                event = self._pending.pop(0)
                seen.append(event)
                if predicate(event):
                    return seen
            if self.ended or time.monotonic() >= deadline:
                raise AssertionError(f"no matching event within {timeout}s; got {seen!r}")
            self._recv(deadline)
            self._decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
