"""Operations: metrics that alert, the alert rules, the dashboard (docs/operations.md).

- The rule file passes ``promtool check rules`` and its unit tests (``promtool test rules``:
  alerts that must fire, and must not, on series shaped as the services export them); the
  Compose Prometheus config passes ``promtool check config``; the PrometheusRule of the
  Kubernetes component holds the same groups; every alert has a runbook entry.
- A real ``icm cloud`` and a real ``icm edge`` process run and are scraped: every metric that a
  rule or the dashboard uses is exported, with the labels they group by; the edge's counters
  appear in the cloud's ``/metrics`` with the edge's own values (cameras behind NAT); the
  per-camera state gauges follow the stream; rejected frames carry bounded reason codes.
- In process: a short max connection age makes the edge reconnect without losing or
  duplicating a frame; the reason codes of codec errors are the fixed set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "compose" / "prometheus"
RULES = PROM / "rules" / "icm-alerts.yaml"
RULE_TESTS = PROM / "tests" / "icm-alerts.test.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "components" / "prometheus-operator" / \
    "prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "icm.json"
RUNBOOK = ROOT / "docs" / "operations.md"


# -- promtool ----------------------------------------------------------------------------------
def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not found (Debian's prometheus package; .ci/run installs it)")
    return exe


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_checks_the_rules_and_the_compose_config() -> None:
    exe = _promtool()
    r = _run([exe, "check", "rules", str(RULES)])
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([exe, "check", "config", str(PROM / "prometheus.yml")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout + r.stderr


def test_alert_rules_unit_tests() -> None:
    r = _run([_promtool(), "test", "rules", str(RULE_TESTS)])
    assert r.returncode == 0, r.stdout + r.stderr


def _alerts() -> list[dict]:
    return [rule for g in yaml.safe_load(RULES.read_text())["groups"] for rule in g["rules"]]


def test_prometheusrule_holds_the_same_rules() -> None:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"], \
        "stale: run python scripts/render_prometheusrule.py"


def test_every_alert_has_a_runbook_entry_and_the_issue_list_is_covered() -> None:
    text = RUNBOOK.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, re.M)}
    names = set()
    for a in _alerts():
        name = a["alert"]
        names.add(name)
        assert a["labels"]["severity"] in ("critical", "warning", "info"), name
        assert a["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/operations.md has no section for {name}"
        assert a["annotations"]["summary"] and a["annotations"]["description"], name
    # what issue 15 lists: camera silent, spool filling, rejects rising, decode / analytics
    # latency p99, database errors, human-view failures, instance down
    assert {"IcmCameraSilent", "IcmSpoolFilling", "IcmFramesRejected", "IcmDecodeLatencyHigh",
            "IcmAnalyticsLatencyHigh", "IcmDatabaseDown", "IcmDatabaseErrors",
            "IcmHumanViewFailures", "IcmCloudInstanceDown"} <= names


# -- PromQL: the metric names an expression reads ----------------------------------------------
_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, keywords, labels, durations left out);
    for ``label_values(m, label)``, just ``m``."""
    expr = re.sub(r'label_values\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)', r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][\w:]*", expr):
        if m.group(0).lower() in _NOT_METRICS or expr[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group(0))
    return names


def _by_labels(expr: str) -> list[tuple[set[str], set[str]]]:
    """(labels named in a `by (...)` / `on (...)` clause, metric names after it)."""
    out = []
    for m in re.finditer(r"\b(?:by|on) \(([^)]*)\) \((.*)", expr, re.S):
        out.append(({s.strip() for s in m.group(1).split(",")}, metric_names(m.group(2))))
    return out


def test_metric_names_parser() -> None:
    e = ('histogram_quantile(0.99, sum by (instance, le) (rate(icm_cloud_decode_seconds_bucket'
         '{job=~".*cloud.*"}[10m]))) > 2 and on (camera) (max by (camera) (up) == 1e6)')
    assert metric_names(e) == {"icm_cloud_decode_seconds_bucket", "up"}
    assert metric_names("time() - max by (camera) (a_b{x=\"y\"})") == {"a_b"}
    assert metric_names("label_values(icm_cloud_frames_stored_total, camera)") == {
        "icm_cloud_frames_stored_total"}


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_shows_fleet_limits_and_staleness() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("connected edges", "spool against its limit", "retention against its limit",
                   "camera staleness", "memory against the container limit"):
        assert needed in titles
    exprs = " ".join(_dashboard_exprs())
    for name in ("icm_cloud_camera_last_frame_timestamp_seconds", "icm_edge_spool_max_bytes",
                 "icm_edge_retained_max_bytes", "icm_cloud_active_sessions",
                 "icm_cloud_max_streams", "icm_cloud_ingest_busy_seconds_total"):
        assert name in exprs
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        for t in p.get("targets", []):
            assert "$edge_job" not in t["expr"], "edge metrics come from either source"


# -- real processes ----------------------------------------------------------------------------
def _free_video(path: Path) -> Path:
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(6):
        w.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    w.release()
    return path


def _start(argv: list[str], log: Path, pattern: str, timeout: float = 120.0):
    env = {**os.environ, "ICM_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("ICM_ANALYST_TOKEN", None)
    f = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "icm_app", *argv], stdout=f,
                            stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, log.read_text())
        if m:
            return proc, m
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"`icm {' '.join(argv)}` did not start:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _exported(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Sample names a Prometheus server would store, and label names seen per sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                 "_created"),
                "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}
    for fam in text_string_to_metric_families(text):
        names |= {fam.name + s for s in suffixes.get(fam.type, ("",))}
        for s in fam.samples:
            names.add(s.name)
            labels.setdefault(s.name, set()).update(s.labels)
    return names, labels


def _label_names(metrics_obj) -> dict[str, set[str]]:
    """Label names each declared metric will carry once it has children."""
    out = {}
    for v in [*vars(metrics_obj).values(), *vars(getattr(metrics_obj, "grpc", object())).values()]:
        name, labelnames = getattr(v, "_name", None), getattr(v, "_labelnames", None)
        if name and labelnames is not None:
            kind = getattr(v, "_type", "")
            for s in {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
                    kind, ("",)):
                out[name + s] = set(labelnames)
    return out


def _bad_stream(port: int, camera: str) -> None:
    """A camera that sends one frame that is no layer at all: the cloud rejects it."""
    import grpc

    from icm_rpc import pb, pb_grpc

    def requests():
        yield pb.EdgeMessage(hello=pb.Hello(camera_id=camera))
        yield pb.EdgeMessage(frame=pb.BaseFrame(frame_id=1, capture_time_us=1,
                                                layer=b"ICM? not a layer"))
        time.sleep(3)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        for m in pb_grpc.EdgeLinkStub(ch).Connect(requests(), timeout=30):
            if m.WhichOneof("body") == "ack":
                break


def _analyst_calls(port: int) -> None:
    """One call that answers and one that fails, so the grpc_server_* series exist."""
    import grpc

    from icm_rpc import pb, pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.AnalystStub(ch)
        stub.ListCameras(pb.ListCamerasRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetFrame(pb.GetFrameRequest(camera_id="nobody", frame_id=1), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.slow
def test_real_processes_export_what_rules_and_dashboard_use(tmp_path: Path) -> None:
    pytest.importorskip("grpc_health")
    from prometheus_client.utils import floatToGoString

    from cloud_decoder.decoders import REJECT_REASONS
    from cloud_decoder.metrics import CloudMetrics
    from edge_encoder.metrics import EdgeMetrics

    t0 = time.time()
    cloud, m = _start(["cloud", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "c.sqlite3"),
                       "--decoder", "noop", "--detectors", "none", "--metrics-port", "0",
                       "--threads", "1", "--edge-stats-s", "0.5"], tmp_path / "cloud.log",
                      r"listening on port (\d+), metrics on :(\d+)")
    edge = None
    try:
        port, cloud_port = int(m.group(1)), int(m.group(2))
        edge, m2 = _start(["edge", "--camera-id", "cam-t", "--cloud", f"127.0.0.1:{port}",
                           "--source", str(_free_video(tmp_path / "v.avi")), "--frames", "3",
                           "--spool-dir", str(tmp_path / "spool"), "--metrics-port", "0",
                           "--threads", "1"], tmp_path / "edge.log", r"metrics on :(\d+)")
        edge_port = int(m2.group(1))
        _bad_stream(port, "cam-bad")
        _analyst_calls(port)
        cam = frozenset({("camera", "cam-t")})
        deadline = time.monotonic() + 90
        while True:   # until the frames went through and the cloud has the edge's counters
            edge_text, cloud_text = _scrape(edge_port), _scrape(cloud_port)
            e, c = _samples(edge_text), _samples(cloud_text)
            acked = e.get(("icm_edge_frames_acked_total", frozenset()), 0)
            if acked == 3 and c.get(("icm_edge_frames_acked_total", cam)) == 3:
                break
            assert time.monotonic() < deadline, f"edge acked {acked}; cloud has " \
                f"{c.get(('icm_edge_frames_acked_total', cam))}"
            time.sleep(0.5)

        # the edge's counters, as the cloud re-exports them, are the edge's own
        for name, labels in (("icm_edge_frames_captured_total", {}),
                             ("icm_edge_frames_sent_total", {}),
                             ("icm_edge_spool_max_bytes", {}),
                             ("icm_edge_retained_max_bytes", {}),
                             ("icm_edge_retention_seconds", {}),
                             ("icm_edge_capture_up", {}),
                             ("icm_edge_frames_encoded_total", {"layer": "base"}),
                             ("icm_edge_layer_bytes_total", {"layer": "base"}),
                             ("icm_edge_encode_seconds_count", {"layer": "base"}),
                             ("icm_edge_encode_seconds_bucket",
                              {"layer": "base", "le": floatToGoString(0.25)}),
                             ("icm_edge_frames_dropped_total", {"reason": "spool_full"})):
            own = e.get((name, frozenset(labels.items())), 0.0)
            assert c[(name, frozenset({**labels, "camera": "cam-t"}.items()))] == own, name
        assert c[("icm_edge_frames_captured_total", cam)] == 3
        assert c[("icm_edge_spool_max_bytes", cam)] == 256 * 2**20
        # per-camera state, limits, process and build
        assert c[("icm_cloud_camera_connected", cam)] == 1
        assert t0 - 5 <= c[("icm_cloud_camera_last_frame_timestamp_seconds", cam)] <= time.time()
        assert c[("icm_cloud_max_streams", frozenset())] == 124
        assert c[("icm_cloud_queue_capacity_frames", frozenset())] > 0
        assert c[("process_resident_memory_bytes", frozenset())] > 0
        assert any(n == "icm_build_info" and dict(lb)["component"] == "cloud"
                   for n, lb in c)
        assert any(n == "icm_build_info" and dict(lb)["component"] == "edge" for n, lb in e)
        # bounded reason codes: the garbage frame is counted under a code, not its message
        reasons = {dict(lb)["reason"] for n, lb in c if n == "icm_cloud_frames_rejected_total"}
        assert reasons and reasons <= set(REJECT_REASONS), reasons
        # per-RPC metrics under the gRPC ecosystem's names
        handled = {(dict(lb)["grpc_method"], dict(lb)["grpc_code"])
                   for n, lb in c if n == "grpc_server_handled_total"}
        assert {("ListCameras", "OK"), ("GetFrame", "NOT_FOUND")} <= handled

        exported, seen = _exported(cloud_text + "\n" + edge_text)
        exported.add("up")   # made by Prometheus at scrape time
        declared = {**_label_names(CloudMetrics()), **_label_names(EdgeMetrics())}
        exprs = _dashboard_exprs() + [a["expr"] for a in _alerts()]
        used: set[str] = set()
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"no metric in {expr!r}"
            missing = names - exported
            assert not missing, f"{expr!r} reads {sorted(missing)}, which nothing exports"
            used |= names
            for by, inner in _by_labels(expr):
                for name in inner:
                    # scrape-time labels (job, instance) and the edge's camera label, which the
                    # scrape configs add (compose: static labels; k8s: PodMonitor relabeling)
                    have = seen.get(name, set()) | declared.get(name, set()) | {
                        "le", "job", "instance", "camera"}
                    assert by - {""} <= have, f"{expr!r}: {name} has no label {by - have}"
        assert any(n.startswith("icm_edge_") for n in used)
        assert any(n.startswith("icm_cloud_") for n in used)
        assert any(n.startswith("grpc_server_") for n in used)

        # the edge goes away: the cloud says so and drops its re-exported series
        _stop(edge)
        deadline = time.monotonic() + 30
        while True:
            c = _samples(_scrape(cloud_port))
            if c.get(("icm_cloud_camera_connected", cam)) == 0:
                break
            assert time.monotonic() < deadline, "the cloud still shows cam-t connected"
            time.sleep(0.3)
        assert ("icm_edge_frames_captured_total", cam) not in c
    finally:
        if edge is not None:
            _stop(edge)
        _stop(cloud)


# -- in process --------------------------------------------------------------------------------
def test_codec_errors_map_to_bounded_reason_codes() -> None:
    pytest.importorskip("grpc")
    import numpy as np

    from cloud_decoder.decoders import REJECT_REASONS, NoopDecoder, RejectedLayerError
    from icm_codec import ScalableCodec
    from icm_codec.registry import default_package

    layer = ScalableCodec.load(default_package("base")).encode_base(
        np.zeros((64, 64, 3), np.uint8), frame_id=1)
    flipped = bytearray(layer)
    flipped[len(flipped) // 2] ^= 0x55
    seen = {}
    for name, data in (("garbage", b"garbage"), ("truncated", layer[:len(layer) // 2]),
                       ("flipped", bytes(flipped)), ("empty", b"")):
        with pytest.raises(RejectedLayerError) as e:
            NoopDecoder().check(data)
        seen[name] = e.value.reason
    assert set(seen.values()) <= set(REJECT_REASONS)
    assert seen["flipped"] == "checksum"
    assert RejectedLayerError("x", "a quote ' and a model id").reason == "corrupt"


@pytest.mark.slow
def test_max_connection_age_rebalances_without_loss(tmp_path: Path, photos) -> None:
    """The cloud ends connections after ~1 s: the edge reconnects (through whatever balances
    connections) again and again, and every frame is stored exactly once."""
    pytest.importorskip("grpc")
    import sqlite3

    import numpy as np
    from PIL import Image

    from cloud_decoder import CloudConfig, CloudServer
    from edge_encoder import EdgeConfig, EdgeService

    frame = np.asarray(Image.fromarray(photos[0]).resize((96, 64)))
    db = tmp_path / "cloud.sqlite3"
    with CloudServer(CloudConfig(listen="127.0.0.1:0", db=str(db), detectors=[],
                                 decoder="noop", max_connection_age_s=1.0,
                                 max_connection_age_grace_s=0.5)) as cloud, \
            EdgeService(EdgeConfig(camera_id="cam-age", cloud=f"127.0.0.1:{cloud.port}",
                                   spool_dir=tmp_path / "spool")) as edge:
        edge.link.backoff.initial = 0.05
        n = 0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            edge.capture_one(np.ascontiguousarray(np.roll(frame, n, axis=1)))
            n += 1
            time.sleep(0.1)
        assert edge.wait_drained(60)
        reconnects = edge.metrics.reconnects._value.get()
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT frame_id FROM frames WHERE camera_id = "
                                          "'cam-age' ORDER BY frame_id")]
    assert reconnects >= 2, "the stream was never ended by its age"
    assert ids == list(range(1, n + 1))


# -- capacity model ----------------------------------------------------------------------------
def test_capacity_model_is_current() -> None:
    """docs/capacity.md's tables are rendered from docs/capacity/measured.json, whose rate
    points are the base packages shipped now: new codec weights make this fail until
    `python scripts/capacity.py measure && python scripts/capacity.py render` is run."""
    r = _run([sys.executable, str(ROOT / "scripts" / "capacity.py"), "render", "--check"])
    assert r.returncode == 0, r.stderr
    pytest.importorskip("torch")
    from icm_codec.registry import list_packages

    measured = json.loads((ROOT / "docs" / "capacity" / "measured.json").read_text())
    shipped = {p.model_id: p.digest for p in list_packages([ROOT / "icm_codec" / "weights"])
               if p.kind == "base"}
    assert {p["package"]: p["digest"] for p in measured["rate_points"]} == shipped, \
        "the shipped base packages changed: re-run scripts/capacity.py measure and render"
    from icm_codec.registry import default_package

    assert measured["default_package"] == default_package("base").stem, \
        "the default base changed: re-run scripts/capacity.py measure and render"
