"""Serving the console: uvicorn in the foreground (``icm console``) or on a background thread
(``icm demo``, tests), with its own access log (see :class:`console.app.AccessGuard`) instead of
uvicorn's, which would log query strings, login tokens included."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

import uvicorn

from .app import ConsoleConfig, create_app

__all__ = ["ConsoleServer", "login_url", "new_token"]


def new_token() -> str:
    return secrets.token_urlsafe(24)


def login_url(base: str, token: str) -> str:
    return f"{base.rstrip('/')}/login?token={token}"


@dataclass
class ConsoleServer:
    config: ConsoleConfig
    host: str = "127.0.0.1"
    port: int = 8080
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.ssl_certfile:
            self.config.cookie_secure = True
        self.app = create_app(self.config)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host=self.host, port=self.port, log_config=None, access_log=False,
            ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile, lifespan="on",
            timeout_graceful_shutdown=3, server_header=False))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_certfile else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{scheme}://{host}:{self.port}"

    def _bound_port(self) -> int:
        for srv in self._server.servers:
            for sock in srv.sockets:
                return int(sock.getsockname()[1])
        return self.port

    def run(self) -> None:
        """In the foreground until SIGTERM / SIGINT (uvicorn's own signal handling)."""
        self._server.run()

    def start(self, timeout: float = 30.0) -> ConsoleServer:
        self._thread = threading.Thread(target=self._server.run, name="console", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.05)):
            if self._server.started or not self._thread.is_alive():
                break
            deadline.wait(0.05)
        if not self._server.started:
            raise OSError(f"the console did not start on {self.host}:{self.port}")
        self.port = self._bound_port()
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
