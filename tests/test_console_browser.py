"""The web console in a real browser: Debian's Chromium, driven by Playwright (no browser
download), against a real cloud process (``icm cloud`` with the YOLO26n instance segmenter on
the shared surveillance clip), real edges streaming its frames and the real ``icm console``
process.

.ci/run installs chromium when it is missing; without it (or without ../shared) these tests
skip and say why.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) missing")
pytest.importorskip("fastapi")

from edge_encoder import EdgeConfig, EdgeService  # noqa: E402

pytestmark = [pytest.mark.shared, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic"]
CLOUD_TOKEN = "cloud-token-for-browser-tests"
VIEWER = "viewer-browser-token-1"
ADMIN = "admin-browser-token-2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "icm_app", *argv], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, cwd=log.parent)


def started(proc: subprocess.Popen, log: Path, pattern: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, log.read_text())
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{log.name}: did not start:\n{log.read_text()[-3000:]}")


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to all at once, then wait (each shuts down gracefully in parallel)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def video_frames(path: Path, n: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while len(out) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(np.ascontiguousarray(bgr[:, :, ::-1]))
        for _ in range(9):   # every 10th frame: people move between them
            cap.grab()
    cap.release()
    assert len(out) == n
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_dir):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install "
                    "chromium chromium-driver)")
    tmp = tmp_path_factory.mktemp("browser")
    weights = shared_dir / "assets" / "detectors"
    frames = video_frames(shared_dir / "data" / "video" / "vtest.avi", 6)
    env = {**os.environ, "ICM_LOG_LEVEL": "info", "OMP_NUM_THREADS": "1",
           "ICM_ANALYST_TOKEN": CLOUD_TOKEN, "YOLO_OFFLINE": "1"}
    for k in ("ICM_CONSOLE_TOKEN", "ICM_CONSOLE_ADMIN_TOKEN"):
        env.pop(k, None)
    port = free_port()
    # cloud and console start side by side (the console needs the cloud only per request)
    cloud = spawn(["cloud", "--listen", f"127.0.0.1:{port}", "--db", str(tmp / "cloud.sqlite3"),
                   "--detectors", "yolo26n-seg", "--weights-dir", str(weights),
                   "--metrics-port", "-1", "--threads", "1"], tmp / "cloud.log", env)
    console = spawn(["console", "--listen", f"127.0.0.1:{free_port()}", "--cloud",
                     f"127.0.0.1:{port}", "--page-size", "24"], tmp / "console.log",
                    {**env, "ICM_CONSOLE_TOKEN": VIEWER, "ICM_CONSOLE_ADMIN_TOKEN": ADMIN})
    procs = [cloud, console]
    edges: dict[str, EdgeService] = {}
    try:
        started(cloud, tmp / "cloud.log", r"listening on port (\d+)")
        for cam in ("gate-1", "gate-2"):
            edges[cam] = EdgeService(EdgeConfig(camera_id=cam, cloud=f"127.0.0.1:{port}",
                                                spool_dir=tmp / f"spool-{cam}")).start()
        for f in frames[:4]:
            edges["gate-1"].capture_one(f)
        edges["gate-2"].capture_one(frames[4])
        for e in edges.values():
            assert e.wait_drained(180)
        edges.pop("gate-2").stop()          # gate-2 goes offline: its enhancement layers too
        m = started(console, tmp / "console.log", r"serving (http://\S+)")
        yield {"url": m.group(1), "edge": edges["gate-1"], "frames": frames, "tmp": tmp,
               "console_log": tmp / "console.log"}
    finally:
        for e in edges.values():
            e.stop()
        stop(procs)


@pytest.fixture(scope="module")
def browser(world, tmp_path_factory):
    """One Chromium for the module (Playwright gives it a fresh, temporary --user-data-dir);
    each test gets its own context: no cookies carried from one test to the next."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(30_000)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error"
          and "the server responded with a status of" not in m.text else None)
    yield pg
    ctx.close()
    assert not errors, errors   # no script errors, no CSP violations


def loaded(pg, selector: str) -> bool:
    return pg.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def test_wrong_token_is_refused(world, page):
    page.goto(world["url"] + "/cameras")
    assert page.url.startswith(world["url"] + "/login?next=")
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    assert page.locator(".problem").inner_text() == "That token is not valid."
    page.goto(world["url"] + "/login?token=also-wrong")
    assert "not valid" in page.locator(".problem").inner_text()
    page.goto(world["url"] + "/api/cameras")
    assert '"unauthorized"' in page.content()


def test_browse_frames_with_detections_and_human_view(world, page):
    url = world["url"]
    page.goto(f"{url}/login?token={VIEWER}")
    assert page.url == url + "/cameras"                # the token is gone from the address
    rows = page.locator("tr[data-camera]")
    assert rows.count() == 2
    assert "online" in page.locator("tr[data-camera=gate-1] .state").inner_text()
    assert "offline" in page.locator("tr[data-camera=gate-2] .state").inner_text()
    assert "768×576" in page.locator("tr[data-camera=gate-1]").inner_text()

    page.click("tr[data-camera=gate-1] >> text=gate-1")
    cards = page.locator(".frame-card")
    assert [cards.nth(i).get_attribute("data-frame-id") for i in range(cards.count())] == [
        "4", "3", "2", "1"]                              # newest first
    for i in range(4):
        card = cards.nth(i)
        assert re.search(r"\d+ person", card.inner_text()), card.inner_text()
        assert card.locator("rect.box[data-class=person]").count() >= 2
        assert card.locator("polygon.mask").count() >= 1   # the segmenter's outlines
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=card.locator("img").element_handle())
    # class filter through the form
    page.fill("input[name=class_name]", "giraffe")
    page.click("form.filters button")
    assert page.locator(".frame-card").count() == 0 and page.locator(".empty").is_visible()
    page.fill("input[name=class_name]", "person")
    page.click("form.filters button")
    assert page.locator(".frame-card").count() == 4

    page.click(".frame-card[data-frame-id='2'] a")
    assert page.url == f"{url}/cameras/gate-1/frames/2"
    page.wait_for_function("() => document.getElementById('machine-img').naturalWidth === 768")
    assert page.locator("#viewer svg rect.box").count() >= 2
    page.uncheck("#toggle-boxes")
    assert not page.locator("#viewer svg.overlay").first.is_visible()
    page.check("#toggle-boxes")

    page.click("#human-button")
    page.wait_for_selector("#human-status progress")   # progress while the edge answers
    assert "Asking camera gate-1's edge" in page.locator("#human-status").inner_text()
    page.wait_for_selector("#human-view", state="visible", timeout=120_000)
    assert page.locator("#human-placeholder").is_hidden()
    page.wait_for_function("() => document.getElementById('human-img').naturalWidth === 768")
    caption = page.locator("#human-caption").inner_text()
    assert re.search(r"[\d.]+ bpp = base [\d.]+ \+ enhancement [\d.]+ bpp", caption), caption
    assert "ready" in page.locator("#human-status").inner_text()
    # the compare slider uncovers the machine image from the left
    page.locator("#compare-slider").fill("30")
    assert page.eval_on_selector("#machine-clip", "e => e.style.width") == "70%"
    page.screenshot(path=str(world["tmp"] / "frame.png"))


def test_offline_camera_gives_the_clear_message(world, page):
    url = world["url"]
    page.goto(f"{url}/login?token={VIEWER}&next=/cameras/gate-2/frames/1")
    assert page.url == f"{url}/cameras/gate-2/frames/1"
    page.click("#human-button")
    alert = page.locator("#human-status.problem")
    alert.wait_for()
    assert "Camera gate-2 is offline" in alert.inner_text()
    assert page.locator("#human-view").is_hidden()
    assert "offline now" in page.locator("#human-placeholder").inner_text()
    # a frame that does not exist: a page that says so, with the right status
    resp = page.goto(f"{url}/cameras/gate-2/frames/999")
    assert resp.status == 404 and "no frame 999" in page.locator(".problem").inner_text()
    resp = page.goto(f"{url}/cameras/no-such-camera")
    assert resp.status == 404


def test_live_view_shows_new_frames(world, page):
    url = world["url"]
    page.goto(f"{url}/login?token={VIEWER}&next=/live%3Fcamera_id%3Dgate-1")
    page.wait_for_function("() => document.getElementById('live-status').textContent"
                           ".startsWith('connected')")
    edge = world["edge"]
    fid = edge.capture_one(world["frames"][5])
    card = page.locator(f"#live .frame-card[data-frame-id='{fid}']")
    card.wait_for(timeout=120_000)
    assert card.get_attribute("data-camera") == "gate-1"
    assert "person" in card.inner_text()
    assert card.locator("rect.box").count() >= 1
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=card.locator("img").element_handle())
    assert "1 frame received" in page.locator("#live-status").inner_text()


def test_settings_need_an_admin(world, page):
    url = world["url"]
    page.goto(f"{url}/login?token={VIEWER}&next=/cameras/gate-1/settings")
    assert "needs an admin login" in page.content()
    assert page.locator("form.settings").count() == 0
    page.click("header .logout button")
    page.wait_for_url(f"{url}/login")
    page.goto(f"{url}/cameras/gate-1/settings")
    assert page.url.startswith(f"{url}/login?next=")    # logged out
    page.goto(f"{url}/login?token={ADMIN}&next=/cameras/gate-1/settings")
    options = page.locator("select[name=base_model_id] option")
    assert options.count() >= 3          # "(unchanged)" and the edge's base models
    page.fill("input[name=max_fps]", "4")
    page.click("form.settings button")
    assert "Sent to the camera" in page.locator(".ok").inner_text()


def test_no_token_in_the_console_log(world):
    text = world["console_log"].read_text()
    assert "GET /login 303" in text and "GET /cameras" in text
    for secret in (VIEWER, ADMIN, CLOUD_TOKEN, "not-the-token", "also-wrong"):
        assert secret not in text
