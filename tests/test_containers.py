"""Containers for real: the project's edge, cloud and console images built from deploy/docker
with a real Docker engine, and run the way the deployment runs them.

- The engine: the one the Docker SDK finds, else (as root) Debian's ``dockerd`` started here
  with no iptables and no bridge (``--network host`` only), on overlay2 where this kernel mounts
  an overlay (tried first), else vfs (which copies the whole file system for every layer).
- The base image: image registries cannot be reached from these machines, so the Dockerfiles'
  ``PYTHON_IMAGE`` build argument gets a Debian bookworm made with ``debootstrap --variant=minbase``
  (python3, venv) and ``docker import`` (kept as icm-test/debian-python:bookworm for the next run).
- The packages: the images' locks and the torch pins, downloaded once from PyPI into
  ``~/.cache/icm-test/wheelhouse`` and served to the builds over loopback as a package index (the
  build runs with host networking; pip inside the base image does not trust the certificate of
  the TLS proxy these machines reach PyPI through). The CPU index of PyTorch is not reachable
  here, so the edge image gets PyPI's torch (with its CUDA runtime) like the cloud: the same
  Dockerfiles with ``TORCH_INDEX_URL`` pointed elsewhere; the image sizes printed are those
  builds'.
- The run: a cloud container (real codec decoder, detectors when ../shared has yolo11n) and an edge
  container streaming a clip to it over host networking, both with a read-only root filesystem as
  user 10001. Frames are stored (asked through the analyst API), both health checks pass (the
  images' own HEALTHCHECK, as Docker runs it), the edge's counters show on the cloud's
  /metrics, and the build revision is in icm_build_info. A console container (no torch in it)
  lists the same frames through the cloud's analyst API.

Skipped, with the reason, where no engine can run, debootstrap is missing, or the disk is short.
Everything the test creates (containers, volumes, the images and their build stages) is
removed at the end; the imported base image and the wheel cache are kept.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

docker = pytest.importorskip("docker", reason="the Docker SDK (dev extra: docker)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "deploy" / "docker"
BASE_TAG = "icm-test/debian-python:bookworm"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "icm-test"
# free disk the builds need: two images of ~6.5 GB (PyPI's torch with its CUDA runtime) and
# their build stages, sharing layers on overlay2; vfs stores every layer as a full copy
MIN_FREE_GB = {"overlay2": 30, "vfs": 60}
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the engine ----------------------------------------------------------------------------------
def _overlay_mounts() -> bool:
    """Whether an overlay file system mounts here (dockerd's overlay2 driver needs one)."""
    with tempfile.TemporaryDirectory(prefix="icm-ovl-") as tmp:
        dirs = [Path(tmp) / d for d in ("lower", "upper", "work", "merged")]
        for d in dirs:
            d.mkdir()
        opts = f"lowerdir={dirs[0]},upperdir={dirs[1]},workdir={dirs[2]}"
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(dirs[3])],
                           capture_output=True)
        if r.returncode != 0:
            return False
        subprocess.run(["umount", str(dirs[3])], capture_output=True)
        return True


@pytest.fixture(scope="module")
def engine():
    """A Docker client whose engine answers; starts dockerd here when none runs."""
    started = None
    client = None
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as e:
        reason = f"no Docker engine answers ({type(e).__name__})"
        dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if Path(
            "/usr/sbin/dockerd").exists() else None)
        if os.geteuid() != 0 or dockerd is None:
            pytest.skip(f"{reason}, and dockerd cannot be started here (needs root and "
                        "Debian's docker.io)")
        log = open(tempfile.mkstemp(prefix="icm-dockerd-", suffix=".log")[1], "w")  # noqa: SIM115
        driver = "overlay2" if _overlay_mounts() else "vfs"
        started = subprocess.Popen([dockerd, "--storage-driver", driver, "--iptables=false",
                                    "--bridge=none"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.from_env(timeout=600)
                client.ping()
                break
            except Exception:
                if started.poll() is not None or time.monotonic() > deadline:
                    started.kill()
                    pytest.skip(f"{reason}; dockerd did not start: "
                                f"{Path(log.name).read_text()[-500:]}")
                time.sleep(1)
    info = client.info()
    root, driver = info.get("DockerRootDir", "/var/lib/docker"), info.get("Driver", "")
    free = shutil.disk_usage(root if Path(root).exists() else "/").free / 2**30
    need = MIN_FREE_GB.get(driver, MIN_FREE_GB["vfs"])
    if free < need:
        pytest.skip(f"{free:.0f} GiB free under {root}: the builds need {need} with {driver}")
    yield client
    client.close()
    if started is not None:
        started.terminate()
        try:
            started.wait(30)
        except subprocess.TimeoutExpired:
            started.kill()


@pytest.fixture(scope="module")
def base_image(engine) -> str:
    """A Debian bookworm with Python 3.11, imported from debootstrap (registries are out of
    reach)."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        engine.images.get(BASE_TAG)
        return BASE_TAG
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        pytest.skip("debootstrap not installed (Debian's debootstrap; .ci/run installs it)")
    with tempfile.TemporaryDirectory(prefix="icm-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        r = subprocess.run([debootstrap, "--variant=minbase",
                            "--include=python3,python3-venv,python-is-python3,ca-certificates",
                            "bookworm", str(rootfs), DEBIAN_MIRROR],
                           capture_output=True, text=True, timeout=1200)
        if r.returncode != 0:
            pytest.skip(f"debootstrap failed: {(r.stdout + r.stderr)[-500:]}")
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        repo, tag = BASE_TAG.split(":")
        engine.api.import_image_from_file(str(tarball), repository=repo, tag=tag)
    return BASE_TAG


# -- the packages, over loopback ----------------------------------------------------------------
def _pip_download(args: list[str], dest: Path) -> None:
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        env.pop(key, None)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--quiet",
                        "--only-binary", ":all:", "--index-url", "https://pypi.org/simple",
                        "-d", str(dest), *args], capture_output=True, text=True, env=env,
                       timeout=3000)
    if r.returncode != 0:
        pytest.skip(f"cannot download the images' packages from PyPI: {r.stderr[-500:]}")


@pytest.fixture(scope="module")
def package_index():
    """A PEP 503 index of the images' wheels on 127.0.0.1 (downloaded once, then cached)."""
    wheels = CACHE / "wheelhouse"
    wheels.mkdir(parents=True, exist_ok=True)
    for image in ("edge", "cloud", "console"):
        _pip_download(["--no-deps", "--require-hashes", "-r",
                       str(DOCKER_DIR / "requirements" / f"{image}.txt")], wheels)
    install = (ROOT / "scripts" / "install.sh").read_text()
    pins = re.findall(r'"((?:torch|torchvision)==[0-9.]+)"', install)
    _pip_download(pins, wheels)
    with tempfile.TemporaryDirectory(prefix="icm-index-") as tmp:
        simple = Path(tmp) / "simple"
        by_project: dict[str, list[Path]] = {}
        for f in wheels.glob("*.whl"):
            name = re.sub(r"[-_.]+", "-", f.name.split("-")[0]).lower()
            by_project.setdefault(name, []).append(f)
        for name, files in by_project.items():
            (simple / name).mkdir(parents=True)
            links = "".join(f'<a href="/files/{f.name}">{f.name}</a><br>\n' for f in files)
            (simple / name / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
        (Path(tmp) / "files").symlink_to(wheels)
        handler = functools.partial(_QuietHandler, directory=tmp)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
        server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


# -- building ------------------------------------------------------------------------------------
def _context(name: str) -> io.BytesIO:
    """The build context BuildKit would send for deploy/docker/<name>.Dockerfile: the
    repository root filtered by that Dockerfile's own .dockerignore, plus the Dockerfile."""
    from docker.utils.build import exclude_paths

    patterns = [p.strip() for p in (DOCKER_DIR / f"{name}.Dockerfile.dockerignore")
                .read_text().splitlines() if p.strip() and not p.startswith("#")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in sorted(exclude_paths(str(ROOT), patterns)):
            path = ROOT / rel
            if path.is_file() and not path.is_symlink():
                tar.add(str(path), arcname=rel, recursive=False)
        data = (DOCKER_DIR / f"{name}.Dockerfile").read_bytes()
        info = tarfile.TarInfo("Dockerfile.icm-test")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@functools.cache
def _revision() -> str:
    """The revision the images are built with, read once: a commit made while the (long) test
    runs must not make the build-info check compare against a newer one."""
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


@pytest.fixture(scope="module")
def images(engine, base_image, package_index):
    """The edge, cloud and console images, built; removed with their build stages
    afterwards."""
    before = {i.id for i in engine.images.list(all=True)}
    built: dict[str, str] = {}
    timings: dict[str, float] = {}
    try:
        for name in ("edge", "cloud", "console"):
            tag = f"icm-test-{name}:ci"
            t0 = time.monotonic()
            log = []
            for chunk in engine.api.build(
                    fileobj=_context(name), custom_context=True,
                    dockerfile="Dockerfile.icm-test", tag=tag, rm=True, forcerm=True,
                    pull=False, network_mode="host", decode=True,
                    buildargs={"PYTHON_IMAGE": base_image, "TORCH_INDEX_URL": package_index,
                               "PIP_INDEX_URL": package_index,
                               "ICM_BUILD_REVISION": _revision()}):
                if "stream" in chunk:
                    log.append(chunk["stream"])
                if "error" in chunk:
                    raise AssertionError(f"building {name} failed: {chunk['error']}\n"
                                         + "".join(log)[-4000:])
            timings[name] = time.monotonic() - t0
            built[name] = tag
        sizes = {n: engine.images.get(t).attrs["Size"] for n, t in built.items()}
        print("\nimage sizes (MB):", json.dumps({n: round(s / 1e6) for n, s in sizes.items()}),
              "build seconds:", json.dumps({n: round(s) for n, s in timings.items()}))
        yield built, sizes
    finally:
        for i in engine.images.list(all=True):
            if i.id not in before:
                with contextlib.suppress(docker.errors.APIError):
                    engine.images.remove(i.id, force=True, noprune=False)


# -- running -------------------------------------------------------------------------------------
def _clip(path: Path) -> Path:
    """A short real clip: crops of scikit-image's photographs, 160x128, MJPEG."""
    cv2 = pytest.importorskip("cv2")
    import numpy as np
    import skimage.data

    photo = skimage.data.astronaut()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 128))
    for i in range(12):
        crop = np.ascontiguousarray(photo[100 + 8 * i:228 + 8 * i, 150:310, ::-1])
        writer.write(crop)
    writer.release()
    return path


def _health(container) -> str:
    container.reload()
    return container.attrs["State"].get("Health", {}).get("Status", "none")


def _wait(cond, timeout: float, what: str, logs=()) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            details = "\n".join(c.logs(tail=40).decode(errors="replace") for c in logs)
            raise AssertionError(f"timed out waiting for {what}\n{details}")
        time.sleep(1)


def test_edge_streams_to_cloud_through_containers(engine, images, tmp_path) -> None:
    built, sizes = images
    clip = _clip(tmp_path / "clip.avi")
    os.chmod(tmp_path, 0o755)
    os.chmod(clip, 0o644)
    edge_port, analyst_port, metrics_port, edge_metrics, edge_health, console_port = (
        _free_port() for _ in range(6))
    weights = Path(os.environ.get("ICM_SHARED_DIR", ROOT.parent / "shared")) / "assets" / \
        "detectors"
    detect = (weights / "yolo11n.pt").is_file()
    volumes = [engine.volumes.create(), engine.volumes.create()]
    cloud = edge = console = None
    common = {"network_mode": "host", "read_only": True, "tmpfs": {"/tmp": ""},
              "detach": True, "environment": {"OMP_NUM_THREADS": "1"}}
    try:
        cloud = engine.containers.run(
            built["cloud"], ["--listen", f"127.0.0.1:{edge_port}",
                             "--analyst-listen", f"127.0.0.1:{analyst_port}",
                             "--metrics-port", str(metrics_port), "--threads", "1",
                             "--edge-stats-s", "1",
                             "--detectors", "yolo11n" if detect else "none"],
            volumes={volumes[0].name: {"bind": "/var/lib/icm", "mode": "rw"},
                     **({str(weights): {"bind": "/weights", "mode": "ro"}} if detect else {})},
            healthcheck={"test": ["CMD", "python", "/app/deploy/docker/healthcheck.py", "grpc",
                                  f"127.0.0.1:{analyst_port}"],
                         "interval": 3 * 10**9, "timeout": 5 * 10**9, "retries": 3,
                         "start_period": 120 * 10**9},
            **common)
        _wait(lambda: _health(cloud) == "healthy", 180, "the cloud's health check", [cloud])
        edge = engine.containers.run(
            built["edge"], ["--camera-id", "cam-c", "--cloud", f"127.0.0.1:{edge_port}",
                            "--source", "/video/clip.avi", "--fps", "5", "--frames", "10",
                            "--threads", "1", "--metrics-port", str(edge_metrics),
                            "--health-listen", f"127.0.0.1:{edge_health}"],
            volumes={volumes[1].name: {"bind": "/var/lib/icm", "mode": "rw"},
                     str(tmp_path): {"bind": "/video", "mode": "ro"}},
            healthcheck={"test": ["CMD", "python", "/app/deploy/docker/healthcheck.py",
                                  "grpc-plaintext", f"127.0.0.1:{edge_health}"],
                         "interval": 3 * 10**9, "timeout": 5 * 10**9, "retries": 3,
                         "start_period": 60 * 10**9},
            **common)
        _wait(lambda: _health(edge) == "healthy", 180, "the edge's health check", [edge, cloud])

        from cloud_decoder.client import AnalystClient

        with AnalystClient(f"127.0.0.1:{analyst_port}") as client:
            _wait(lambda: len(client.frames("cam-c", limit=100)) == 10, 300,
                  "10 frames stored", [edge, cloud])
            frames = client.frames("cam-c", limit=100)
        assert [f.frame_id for f in frames] == list(range(1, 11))
        assert all((f.width, f.height) == (160, 128) for f in frames)
        if detect:
            assert any(f.detections for f in frames), "yolo11n found nothing in the photos"

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                          timeout=10).read().decode()

        # the edge sends its counters every --edge-stats-s (1 s), not with each frame: the 10th
        # frame can be stored before the counters that include it arrive
        captured = re.compile(r'^icm_edge_frames_captured_total\{camera="cam-c"\} 10\.0$', re.M)
        _wait(lambda: captured.search(scrape()), 30,
              "the edge's counters (10 frames captured) in the cloud's /metrics", [edge, cloud])
        text = scrape()
        assert f'revision="{_revision()}"' in text

        # the web console (its own image, no torch) shows the frames through the cloud
        token = "console-test-token-" + "x" * 16
        console = engine.containers.run(
            built["console"], ["--listen", f"127.0.0.1:{console_port}",
                               "--cloud", f"127.0.0.1:{analyst_port}"],
            healthcheck={"test": ["CMD", "python", "/app/deploy/docker/healthcheck.py", "http",
                                  f"http://127.0.0.1:{console_port}/healthz"],
                         "interval": 3 * 10**9, "timeout": 5 * 10**9, "retries": 3,
                         "start_period": 60 * 10**9},
            **{**common, "environment": {"ICM_CONSOLE_TOKEN": token}})
        _wait(lambda: _health(console) == "healthy", 120, "the console's health check",
              [console])
        req = urllib.request.Request(
            f"http://127.0.0.1:{console_port}/api/cameras/cam-c/frames?limit=50",
            headers={"Authorization": f"Bearer {token}"})
        listed = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert sorted(f["frame_id"] for f in listed["frames"]) == list(range(1, 11))
        out = console.exec_run(["python", "-c", "import importlib.util as u; "
                                "print(u.find_spec('torch') is None)"]).output.decode()
        assert out.strip() == "True", f"the console image has torch: {out}"
        # nor the codec's packages or adapted detectors, which it never loads
        out = console.exec_run(["python", "-c", "import importlib.util as u, pathlib; print(["
                                "str(p) for m in ('icm_codec', 'analytics') for p in pathlib.Path("
                                "u.find_spec(m).origin).parent.rglob('*') "
                                "if p.suffix in ('.icmpkg', '.pt')])"]).output.decode()
        assert out.strip() == "[]", f"the console image carries weights: {out}"
        # non-root, read-only root filesystem, writable only where the deployment says
        for c in (cloud, edge, console):
            c.reload()
            assert c.attrs["Config"]["User"] == "10001:10001"
            assert c.attrs["HostConfig"]["ReadonlyRootfs"] is True
            assert c.exec_run(["id", "-u"]).output.decode().strip() == "10001"
            assert c.exec_run(["touch", "/opt/venv/x"]).exit_code != 0
            # the services' state volume; the console keeps none (its root stays read-only)
            wrote = c.exec_run(["touch", "/var/lib/icm/x"]).exit_code == 0
            assert wrote is (c is not console), c.name
        # one OpenCV, the headless build
        out = cloud.exec_run(["python", "-c", "import importlib.metadata as m, cv2; "
                              "print(sorted(d.metadata['Name'] for d in m.distributions() "
                              "if 'opencv' in d.metadata['Name']))"]).output.decode()
        assert out.strip() == "['opencv-python-headless']", out
    finally:
        for c in (console, edge, cloud):
            if c is not None:
                with contextlib.suppress(docker.errors.APIError):
                    c.remove(force=True)
        for v in volumes:
            with contextlib.suppress(docker.errors.APIError):
                v.remove(force=True)
    for name, size in sizes.items():
        assert size < 8e9, f"the {name} image is {size / 1e9:.1f} GB"
