"""``icm console``: the analyst web console."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from icm_codec.commands import CommandTable
from icm_codec.configflags import add_env_flag
from icm_rpc.cli_common import add_logging_flags

__all__ = ["COMMANDS"]

COMMANDS = CommandTable()
command = COMMANDS.command


def _configure(p: argparse.ArgumentParser) -> None:
    add_env_flag(p, "--listen", env="ICM_CONSOLE_LISTEN", default="0.0.0.0:8080",
                 help="HOST:PORT to serve on")
    add_env_flag(p, "--cloud", env="ICM_CLOUD", default="localhost:50051",
                 help="the cloud's analyst address (any instance)")
    add_env_flag(p, "--tls-ca", env="ICM_TLS_CA", help="CA of the cloud's certificate: TLS to "
                 "the cloud")
    add_env_flag(p, "--server-name", env="ICM_TLS_SERVER_NAME", default="",
                 help="TLS name to expect from the cloud")
    add_env_flag(p, "--https-cert", env="ICM_CONSOLE_TLS_CERT",
                 help="serve HTTPS with this certificate (PEM)")
    add_env_flag(p, "--https-key", env="ICM_CONSOLE_TLS_KEY", help="its private key")
    add_env_flag(p, "--secure-cookies", env="ICM_CONSOLE_SECURE_COOKIES", switch=True,
                 default=False,
                 help="mark the session cookie Secure (HTTPS ends at a proxy in front)")
    add_env_flag(p, "--public-url", env="ICM_CONSOLE_URL", default="",
                 help="the console's address as people reach it (for the printed login link)")
    add_env_flag(p, "--page-size", env="ICM_CONSOLE_PAGE_SIZE", type=int, default=48,
                 help="frames per page (1-200)")
    add_env_flag(p, "--timeout", env="ICM_CONSOLE_TIMEOUT", type=float, default=15.0,
                 help="seconds per cloud call")
    add_logging_flags(p)
    p.epilog = ("Tokens come from the environment only (never flags, which show in process "
                "lists): ICM_CONSOLE_TOKEN (viewers), ICM_CONSOLE_ADMIN_TOKEN (may change "
                "camera settings), ICM_ANALYST_TOKEN (the cloud's analyst token). With no "
                "console token set, an admin token is generated and its login link printed.")


@command("console", "run the analyst web console (cameras, frames, human views, live)",
         _configure)
def _console(args: argparse.Namespace) -> int:
    from icm_rpc.logs import setup_logging
    from icm_rpc.tls import TLSFiles

    from .app import ConsoleConfig
    from .server import ConsoleServer, login_url, new_token

    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {args.listen!r}")
    if not 1 <= args.page_size <= 200:
        raise ValueError("--page-size is 1-200")
    if bool(args.https_cert) != bool(args.https_key):
        raise ValueError("--https-cert and --https-key go together")
    setup_logging(args.log_level, args.log_format)   # after the checks: bad flags change nothing
    viewer = os.environ.get("ICM_CONSOLE_TOKEN", "")
    admin = os.environ.get("ICM_CONSOLE_ADMIN_TOKEN", "")
    generated = not viewer and not admin
    if generated:
        admin = new_token()
    tls = TLSFiles(ca=Path(args.tls_ca)) if args.tls_ca else None
    config = ConsoleConfig(cloud=args.cloud, analyst_token=os.environ.get("ICM_ANALYST_TOKEN", ""),
                           tls=tls or TLSFiles(), server_name=args.server_name,
                           viewer_token=viewer, admin_token=admin, page_size=args.page_size,
                           timeout_s=args.timeout, cookie_secure=args.secure_cookies)
    server = ConsoleServer(config, host=host or "0.0.0.0", port=int(port),
                           ssl_certfile=args.https_cert, ssl_keyfile=args.https_key)
    server.start()
    base = args.public_url or server.url
    print(f"icm console: serving {base} (cloud {args.cloud})", flush=True)
    if generated:
        # like notebook servers: the one place the generated token appears (stdout, not logs)
        print(f"icm console: log in at {login_url(base, admin)}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0
