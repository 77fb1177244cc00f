"""HTTP plumbing shared by the sandbox and the webhook sink: a threaded server on a background thread that
reads any body framing, answers JSON with a request id and never logs (the request path stays cheap)."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MAX_BODY_BYTES = 16 * 1024 * 1024


class BodyError(Exception):
    """The request body could not be read (bad framing or too large)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error



class LocalHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server that tracks open connections so `stop()` can close idle keep-alive ones."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: Any) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.connections_accepted = 0
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which can stall; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
            self.connections_accepted += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open client connection (idle keep-alive ones would otherwise live on)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response is normal here (timeouts, benchmarks); stay quiet.
        return


class JsonHandler(BaseHTTPRequestHandler):
    """Request handler with JSON replies, keep-alive and no stderr logging."""

    protocol_version = "HTTP/1.1"
    server_version = "CXoneSandbox/1.0"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and a small body leave in one send

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        return

    def version_string(self) -> str:
        return self.server_version

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Handle one request: a connection the client dropped is closed; a sandbox bug still answers (500), never
        hangs the client."""
        try:
            yield
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - whatever broke, the client gets an answer
            self.close_connection = True
            self.send_json(500, {"error": "internal_error"})

    def read_request(self) -> tuple[str, bytes] | None:
        """The request's path and body; None when the body could not be read (that error is already answered)."""
        try:
            body = self.read_body()
        except BodyError as exc:
            self.send_json(exc.status, {"error": exc.error})
            return None
        return self.split_path(), body

    def read_body(self) -> bytes:
        """The request body, always fully consumed so the connection can be reused."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            self.close_connection = True
            raise BodyError(400, "invalid_content_length") from None
        if length < 0:
            self.close_connection = True
            raise BodyError(400, "invalid_content_length")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise BodyError(413, "payload_too_large")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise BodyError(400, "invalid_chunked_body") from None
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise BodyError(413, "payload_too_large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)  # CRLF after the chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields
        return b"".join(chunks)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Send one complete JSON response with Content-Length and a fresh X-Request-Id."""
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, unknown method) as JSON too; the body may be unread."""
        self.close_connection = True
        reason = message or self.responses.get(code, ("error",))[0]
        self.send_json(code, {"error": reason.lower().replace(" ", "_")})

    def drop_connection(self) -> None:
        """Close the connection without sending any response."""
        self.close_connection = True

    def split_path(self) -> str:
        return urlsplit(self.path).path

    def _method_not_allowed(self) -> None:
        try:
            self.read_body()
        except BodyError:
            pass
        self.send_json(405, {"error": "method_not_allowed"}, {"Allow": "GET, POST"})

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed


class IssuedTokens:
    """Token book-keeping both sandbox servers share (under their ``_lock``): ``_tokens`` live token -> expiry,
    ``_issued`` every token handed out (tests grep logs for them)."""

    _lock: Any
    _tokens: dict[str, float]
    _issued: list[str]

    def issued_tokens(self) -> list[str]:
        """Every access token issued since start or the last reset (for tests that grep logs for leaks)."""
        with self._lock:
            return list(self._issued)

    def revoke_tokens(self) -> int:
        """Invalidate every token issued so far; returns how many were live."""
        with self._lock:
            revoked = len(self._tokens)
            self._tokens.clear()
            return revoked


class ServerRunner:
    """Start/stop/url/context-manager plumbing around one `LocalHTTPServer` on a background thread."""

    _handler_class: type[BaseHTTPRequestHandler]
    _thread_name = "http-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._server: LocalHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ServerRunner":
        """Bind and serve on a daemon thread; a restarted server binds the port it had before."""
        if self._server is not None:
            return self
        server = LocalHTTPServer((self._host, self._requested_port), self._handler_class, self)
        self._requested_port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},  # how long stop() may wait
            name=f"{self._thread_name}:{self._requested_port}",
            daemon=True,
        )
        self._server = server
        self._thread = thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and the listening socket, join the thread."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def _connections_accepted(self) -> int:
        return self._server.connections_accepted if self._server is not None else 0

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def parse_json_body(body: bytes) -> tuple[bool, Any]:
    """(True, value) for a JSON body, (False, None) otherwise."""
    try:
        return True, json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False, None

