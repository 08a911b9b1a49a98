"""Network faults between a real edge process and a real cloud process, each in a network
namespace this test creates, joined by a veth pair (addresses exist only inside those
namespaces). Faults are iptables rules in the edge's namespace (this kernel has no netem):

- a 30-second partition (every packet on the link dropped): the edge keeps capturing into its
  spool; a human-view request during it answers UNAVAILABLE within seconds (heartbeats show
  the edge silent), and after it heals the edge reconnects, drains, and a human view of a
  frame captured during the partition works;
- 10 % random packet loss both ways for a while.

Every frame the edge captured is stored exactly once (ids 1..N, no gap). The cloud listens on
the veth address, not loopback, so it runs with mutual TLS, as the secure defaults require.
Needs root, ``ip`` and ``iptables``: skipped with the reason otherwise (.ci/run installs
iptables).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_for

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
HEARTBEAT_S = 1.0

_ANALYST = r"""
import json, sys, time
import grpc
from cloud_decoder.client import AnalystClient
from icm_rpc.tls import TLSFiles
client = AnalystClient(sys.argv[1], tls=TLSFiles(ca=sys.argv[2]), timeout=60)
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.monotonic()
    try:
        r = client.human_view(req["camera"], req["frame"])
        out = {"code": "OK", "bytes": len(r.png)}
    except grpc.RpcError as e:
        out = {"code": e.code().name, "details": e.details()}
    out["elapsed"] = time.monotonic() - t0
    print(json.dumps(out), flush=True)
"""


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install iproute2 iptables)"
    name = f"icmprobe{secrets.token_hex(3)}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    try:
        r = subprocess.run(["ip", "netns", "exec", name, "iptables", "-A", "INPUT", "-m",
                            "statistic", "--mode", "random", "--probability", "0.1", "-j",
                            "DROP"], capture_output=True, text=True)
        if r.returncode != 0:
            return f"iptables does not work in a namespace: {r.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class Link:
    """Two namespaces and a veth pair between them; :meth:`partition`, :meth:`lossy` and
    :meth:`heal` set iptables rules on the edge's end."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.edge_ns, self.cloud_ns = f"icm-e-{tag}", f"icm-c-{tag}"
        self.edge_if, self.cloud_if = f"ve{tag}", f"vc{tag}"
        octet = 1 + int(tag[:2], 16) % 250
        self.cloud_ip, self.edge_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
        _sh("ip", "netns", "add", self.edge_ns)
        _sh("ip", "netns", "add", self.cloud_ns)
        _sh("ip", "link", "add", self.edge_if, "netns", self.edge_ns, "type", "veth", "peer",
            "name", self.cloud_if, "netns", self.cloud_ns)
        for ns, dev, ip in ((self.edge_ns, self.edge_if, self.edge_ip),
                            (self.cloud_ns, self.cloud_if, self.cloud_ip)):
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")

    def _iptables(self, *args: str) -> None:
        _sh("ip", "netns", "exec", self.edge_ns, "iptables", *args)

    def partition(self) -> None:
        self._iptables("-A", "INPUT", "-i", self.edge_if, "-j", "DROP")
        self._iptables("-A", "OUTPUT", "-o", self.edge_if, "-j", "DROP")

    def lossy(self, p: float) -> None:
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            self._iptables("-A", chain, flag, self.edge_if, "-m", "statistic", "--mode",
                           "random", "--probability", str(p), "-j", "DROP")

    def heal(self) -> None:
        self._iptables("-F")

    def close(self) -> None:
        for ns in (self.edge_ns, self.cloud_ns):
            _sh("ip", "netns", "del", ns, check=False)


@pytest.fixture()
def link():
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    net = Link()
    try:
        yield net
    finally:
        net.close()


def _video(path: Path) -> Path:
    cv2 = pytest.importorskip("cv2")
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    yy, xx = np.mgrid[0:64, 0:96]
    for i in range(8):
        w.write(np.stack([(xx * 2 + i * 20) % 256, (yy * 3) % 256, (xx + yy + i) % 256],
                         -1).astype(np.uint8))
    w.release()
    return path


def _spawn(ns: str, argv: list[str], log: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *argv], cwd=REPO,
                            env=env, stderr=log.open("w"), **kw)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ids(db: Path) -> list[int]:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return [r[0] for r in c.execute("SELECT frame_id FROM frames WHERE camera_id = "
                                            "'cam-n' ORDER BY frame_id")]
    except sqlite3.Error:
        return []


def _captured(spool: Path) -> tuple[int, int]:
    """(frames captured, frames pending) from the edge's spool."""
    with sqlite3.connect(spool, timeout=5) as c:
        nxt = int(c.execute("SELECT value FROM meta WHERE key = 'next_frame_id'").fetchone()[0])
        return nxt - 1, int(c.execute("SELECT COUNT(*) FROM pending").fetchone()[0])


def test_partition_and_packet_loss(link: Link, tmp_path: Path) -> None:
    from icm_rpc.tls import make_ca, make_cert

    pki = tmp_path / "pki"
    make_ca(pki)
    make_cert(pki, "cloud", server=True, hosts=("127.0.0.1", link.cloud_ip))
    make_cert(pki, "cam-n")
    db, spool = tmp_path / "cloud.sqlite3", tmp_path / "spool"
    cloud = _spawn(link.cloud_ns, [
        "-m", "icm_codec.cli", "cloud", "--listen", f"{link.cloud_ip}:50051",
        "--analyst-listen", "127.0.0.1:50052", "--db", str(db), "--detectors", "none",
        "--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "cloud.pem"),
        "--tls-key", str(pki / "cloud.key"), "--heartbeat-s", str(HEARTBEAT_S),
        "--metrics-port", "-1", "--threads", "1"], tmp_path / "cloud.log")
    edge = _spawn(link.edge_ns, [
        "-m", "icm_codec.cli", "edge", "--camera-id", "cam-n", "--cloud",
        f"{link.cloud_ip}:50051", "--source", str(_video(tmp_path / "v.avi")), "--loop",
        "--fps", "4", "--spool-dir", str(spool), "--tls-ca", str(pki / "ca.pem"),
        "--tls-cert", str(pki / "cam-n.pem"), "--tls-key", str(pki / "cam-n.key"),
        "--max-backoff-s", "2", "--metrics-port", "-1", "--threads", "1"],
        tmp_path / "edge.log")
    analyst = _spawn(link.cloud_ns, ["-c", _ANALYST, "127.0.0.1:50052", str(pki / "ca.pem")],
                     tmp_path / "analyst.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     text=True)
    procs = [edge, cloud, analyst]

    def logs() -> str:
        return "\n".join(f"--- {n}\n{(tmp_path / n).read_text()[-2500:]}"
                         for n in ("cloud.log", "edge.log", "analyst.log"))

    def human(frame_id: int) -> dict:
        analyst.stdin.write(json.dumps({"camera": "cam-n", "frame": frame_id}) + "\n")
        analyst.stdin.flush()
        return json.loads(analyst.stdout.readline() or '{"code": "no answer"}')

    def drained() -> bool:
        captured, pending = _captured(spool / "spool.sqlite3")
        return pending == 0 and _ids(db) == list(range(1, captured + 1))

    try:
        wait_for(lambda: len(_ids(db)) >= 8, 180, "frames through the veth link")
        first = human(3)
        assert first["code"] == "OK" and first["bytes"] > 0, (first, logs())

        link.partition()                                          # 30 s without a packet
        t_part = time.monotonic()
        time.sleep(1.5)
        during = human(5)
        assert during["code"] == "UNAVAILABLE", (during, logs())
        assert during["elapsed"] < 4 * HEARTBEAT_S + 3, during    # promptly, not after 30 s
        later = human(6)
        assert later["code"] == "UNAVAILABLE" and later["elapsed"] < 2, later
        stored_before = len(_ids(db))
        time.sleep(max(0.0, 30 - (time.monotonic() - t_part)))
        captured, pending = _captured(spool / "spool.sqlite3")
        assert pending >= 50 and len(_ids(db)) == stored_before   # spooled, not sent
        link.heal()
        t_heal = time.monotonic()
        wait_for(drained, 120, f"the edge to drain after the partition\n{logs()}")
        assert time.monotonic() - t_heal < 60
        after = human(captured - 5)                               # captured during it
        assert after["code"] == "OK" and after["bytes"] > 0, (after, logs())

        link.lossy(0.10)                                          # 10 % loss both ways
        wait_for(lambda: len(_ids(db)) >= captured + 40, 120, f"frames under loss\n{logs()}")
        lossy_view = human(captured + 20)
        assert lossy_view["code"] == "OK", (lossy_view, logs())
        link.heal()
        wait_for(drained, 120, f"the edge to drain after the loss\n{logs()}")
        assert all(p.poll() is None for p in procs), logs()
    finally:
        for p in procs:
            _stop(p)
