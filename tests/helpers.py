"""Helpers the service tests share: waiting, free ports, a throw-away PostgreSQL server."""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def wait_for(cond, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PostgreSQL ----------------------------------------------------------------------------------
class PgUnavailableError(RuntimeError):
    """No PostgreSQL server can be run here (the message says why: tests skip with it)."""


def pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: [
        int(x) for x in re.findall(r"\d+", d)])
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


class PgServer:
    """A throw-away PostgreSQL server: ``initdb`` + ``pg_ctl`` in a temporary folder on a free
    port, run as the ``postgres`` user when the tests run as root (initdb refuses root). With
    ``password``, connections need it (scram-sha-256); :meth:`stop` / :meth:`start` restart
    it on the same port and data."""

    def __init__(self, password: str = "") -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise PgUnavailableError("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                                     "apt-get install postgresql")
        self.bindir = bindir
        self.password = password
        self.as_user: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="icm-pg-"))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailableError("running as root and there is no 'postgres' user to "
                                         "run initdb as") from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise PgUnavailableError("running as root without runuser to switch to the "
                                         "postgres user")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self.as_user = [runuser, "-u", "postgres", "--"]
        self.data, self.port = self.base / "data", free_port()
        args = ["-D", str(self.data), "-U", "icm", "--no-sync", "-E", "UTF8"]
        if password:
            pwfile = self.base / "pw"
            pwfile.write_text(password + "\n")
            if self.as_user:
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            args += ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            args += ["--auth=trust"]
        r = self._run("initdb", *args)
        if r.returncode != 0:
            self.cleanup()
            raise PgUnavailableError(f"initdb failed: {r.stderr.strip()[-500:]}")
        self.start()

    def _run(self, tool: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, str(self.bindir / tool), *args],
                              capture_output=True, text=True, timeout=timeout)

    @property
    def url(self) -> str:
        auth = f"icm:{self.password}" if self.password else "icm"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w",
                      "-t", "60", "-o", f"-p {self.port} -k {self.base} -c "
                      "listen_addresses=127.0.0.1 -c fsync=off", "start")
        if r.returncode != 0:
            log = (self.base / "log").read_text() if (self.base / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stdout}{r.stderr}{log[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
