"""The web console's JSON API and security, against a real cloud (gRPC on loopback, real
codec), real edges streaming frames and the real console over HTTP. The browser tests are in
test_console_browser.py; this file covers the API's answers to bad input, login, CSRF, roles,
human views (done, offline camera, frame no longer retained), live events and speed on a
camera with 100k frames."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from cloud_decoder import CloudConfig, CloudServer  # noqa: E402
from console import ConsoleConfig, ConsoleServer  # noqa: E402
from edge_encoder import EdgeConfig, EdgeService  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLOUD_TOKEN = "cloud-analyst-secret"
VIEWER = "viewer-token-123"
ADMIN = "admin-token-456"
# frames' capture times, 1 s apart: recent, so that the edge still retains them (1 h)
T0_US = (int(time.time()) - 600) * 1_000_000


def iso(us: int, zone: str = "Z") -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + zone


def wait_for(cond, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, photos):
    """cloud + three edges (cam-1 online, cam-gone offline, cam-forget keeping nothing) +
    console, on loopback."""
    tmp = tmp_path_factory.mktemp("console")
    base = np.asarray(Image.fromarray(photos[0]).resize((160, 128)))
    frames = [np.ascontiguousarray(np.roll(base, 9 * i, axis=1)) for i in range(6)]
    records = _Records()
    logging.getLogger("icm.console").addHandler(records)
    logging.getLogger("icm.console").setLevel(logging.DEBUG)
    cloud = CloudServer(CloudConfig(listen="127.0.0.1:0", db=str(tmp / "cloud.sqlite3"),
                                    detectors=[], analyst_token=CLOUD_TOKEN)).start()
    edges = {}
    try:
        for cam, kw in (("cam-1", {}), ("cam-gone", {}), ("cam-forget",
                                                         {"max_retained_mb": 0.0})):
            edges[cam] = EdgeService(EdgeConfig(camera_id=cam, cloud=f"127.0.0.1:{cloud.port}",
                                                spool_dir=tmp / f"spool-{cam}", **kw)).start()
        for i, f in enumerate(frames[:5]):
            edges["cam-1"].capture_one(f, capture_us=T0_US + i * 1_000_000)
        edges["cam-gone"].capture_one(frames[0])
        edges["cam-forget"].capture_one(frames[1])
        for e in edges.values():
            assert e.wait_drained(120)
        edges.pop("cam-gone").stop()
        wait_for(lambda: cloud.sessions.get("cam-gone") is None, 20, "cam-gone offline")
        console = ConsoleServer(ConsoleConfig(cloud=f"127.0.0.1:{cloud.port}",
                                              analyst_token=CLOUD_TOKEN, viewer_token=VIEWER,
                                              admin_token=ADMIN, page_size=3), port=0).start()
        try:
            yield {"cloud": cloud, "edges": edges, "console": console, "frames": frames,
                   "logs": records}
        finally:
            console.stop()
    finally:
        for e in edges.values():
            e.stop()
        cloud.stop()
        logging.getLogger("icm.console").removeHandler(records)


def client(stack, token: str | None = ADMIN) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=stack["console"].url, headers=headers, timeout=120)


def login(stack, token: str = VIEWER) -> tuple[httpx.Client, str]:
    """A browser-like session: the login link, the cookie, the page's CSRF token."""
    c = httpx.Client(base_url=stack["console"].url, timeout=120, follow_redirects=True)
    r = c.get("/login", params={"token": token, "next": "/cameras"})
    assert r.status_code == 200 and r.url.path == "/cameras"
    csrf = r.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    assert len(csrf) == 64
    return c, csrf


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["status"] == status and err["message"]
    return err


# -- data ----------------------------------------------------------------------------------------
def test_cameras_and_frames_newest_first_with_paging(stack):
    with client(stack) as c:
        cams = {x["camera_id"]: x for x in c.get("/api/cameras").json()["cameras"]}
        assert set(cams) == {"cam-1", "cam-gone", "cam-forget"}
        cam = cams["cam-1"]
        assert cam["online"] and not cams["cam-gone"]["online"]
        assert (cam["width"], cam["height"]) == (160, 128) and cam["frames_stored"] == 5
        assert cam["base_model_id"] and cam["base_model_id"] in cam["base_models"]
        assert cam["last_capture_us"] == T0_US + 4_000_000
        assert cam["recent_fps"] == pytest.approx(1.0)          # 1 s apart in capture time
        assert cam["recent_bpp"] > 0 and cam["recent_kbps"] > 0

        page = c.get("/api/cameras/cam-1/frames").json()      # page size 3
        assert [f["frame_id"] for f in page["frames"]] == [5, 4, 3]
        assert page["older_before"] == 3 and page["newer_after"] is None
        older = c.get("/api/cameras/cam-1/frames", params={"before": 3}).json()
        assert [f["frame_id"] for f in older["frames"]] == [2, 1]
        assert older["older_before"] is None and older["newer_after"] == 2
        newer = c.get("/api/cameras/cam-1/frames", params={"after": 2}).json()
        assert [f["frame_id"] for f in newer["frames"]] == [5, 4, 3]
        ranged = c.get("/api/cameras/cam-1/frames", params={
            "since": iso(T0_US + 1_000_000), "until": iso(T0_US + 3_000_000, "")}).json()
        assert [f["frame_id"] for f in ranged["frames"]] == [3, 2]
        assert c.get("/api/cameras/cam-1/frames", params={"class_name": "giraffe"}
                     ).json()["frames"] == []
        frame = c.get("/api/cameras/cam-1/frames/3").json()
        assert frame["frame"]["frame_id"] == 3 and (frame["older"], frame["newer"]) == (2, 4)
        assert frame["frame"]["capture_time_us"] == T0_US + 2_000_000


def test_images_have_their_content_types(stack):
    with client(stack) as c:
        for path, kind, size in (("thumbnail.jpg", "image/jpeg", (160, 128)),
                                 ("machine.png", "image/png", (160, 128))):
            r = c.get(f"/api/cameras/cam-1/frames/2/{path}")
            assert r.status_code == 200 and r.headers["content-type"] == kind
            assert r.headers["x-content-type-options"] == "nosniff"
            import io

            im = Image.open(io.BytesIO(r.content))
            assert im.format == kind.split("/")[1].upper().replace("JPG", "JPEG")
            assert im.size == size


def test_pages_render(stack):
    with client(stack) as c:
        for path, text in (("/cameras", "cam-forget"), ("/cameras/cam-1", "#5"),
                           ("/cameras/cam-1/frames/2", "Machine image"),
                           ("/live?camera_id=cam-1", "Live detections"),
                           ("/cameras/cam-1/settings", "Base rate point")):
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert text in r.text, path
            assert "script-src 'self'" in r.headers["content-security-policy"]


# -- bad input: clear 4xx, never a 500 -------------------------------------------------------------
@pytest.mark.parametrize("path,status,code", [
    ("/api/cameras/no-such-cam", 404, "unknown_camera"),
    ("/api/cameras/no-such-cam/frames", 404, "unknown_camera"),
    ("/api/cameras/no-such-cam/frames/1", 404, "unknown_camera"),
    ("/api/cameras/cam-1/frames/99", 404, "not_found"),
    ("/api/cameras/cam-1/frames/99/thumbnail.jpg", 404, "not_found"),
    ("/api/cameras/cam-1/frames/99/machine.png", 404, "not_found"),
    ("/api/cameras/cam-1/frames/0", 400, "bad_request"),
    ("/api/cameras/cam-1/frames/-3", 400, "bad_request"),
    ("/api/cameras/cam-1/frames/9223372036854775808", 400, "bad_request"),
    ("/api/cameras/cam-1/frames/99999999999999999999999", 400, "bad_request"),
    ("/api/cameras/cam-1/frames/abc", 400, "bad_request"),
    ("/api/cameras/cam-1/frames/1.5/machine.png", 400, "bad_request"),
    ("/api/cameras/cam-1/frames?limit=abc", 400, "bad_request"),
    ("/api/cameras/cam-1/frames?limit=0", 400, "bad_request"),
    ("/api/cameras/cam-1/frames?limit=100000", 400, "bad_request"),
    ("/api/cameras/cam-1/frames?before=-1", 400, "bad_request"),
    ("/api/cameras/cam-1/frames?before=3&after=1", 400, "bad_request"),
    ("/api/cameras/cam-1/frames?since=yesterday", 400, "bad_time"),
    ("/api/cameras/cam-1/frames?since=2026-09-22T00:00Z&until=2026-09-21T00:00Z", 400,
     "bad_time"),
    ("/api/cameras/cam-1/frames?class_name=%3Cscript%3E", 400, "bad_request"),
    ("/api/cameras/" + "x" * 129 + "/frames", 400, "bad_request"),
    ("/api/cameras/cam%01/frames", 400, "bad_camera_id"),
    ("/api/cameras/cam-1/frames/1/human", 404, "no_job"),
    ("/api/cameras/cam-1/frames/1/human.png", 404, "no_human_view"),
    ("/api/live?class_name=%00", 400, "bad_request"),
    ("/api/no-such-thing", 404, "http"),
])
def test_bad_input_is_a_clear_4xx(stack, path, status, code):
    with client(stack) as c:
        err = error_of(c.get(path), status)
        assert err["code"] == code, err


def test_bad_input_on_pages_is_a_page(stack):
    with client(stack) as c:
        r = c.get("/cameras/no-such-cam")
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert "no camera &#39;no-such-cam&#39; is known" in r.text
        r = c.get("/cameras/cam-1/frames/0")
        assert r.status_code == 400 and "frame_id" in r.text
        r = c.get("/cameras/cam-1?since=not-a-time")
        assert r.status_code == 400 and "ISO 8601" in r.text


def test_bad_settings_requests(stack):
    with client(stack, ADMIN) as c:
        url = "/api/cameras/cam-1/settings"
        assert error_of(c.post(url, content=b"{not json", headers={
            "content-type": "application/json"}), 400)["code"] == "bad_request"
        assert error_of(c.post(url, json={"max_fps": "fast"}), 400)["code"] == "bad_fps"
        assert error_of(c.post(url, json={"max_fps": -2}), 400)["code"] == "bad_fps"
        assert error_of(c.post(url, json={}), 400)["code"] == "nothing_to_change"
        assert error_of(c.post(url, json={"base_model_id": "no-such-model"}),
                        400)["code"] == "unknown_base_model"
        assert error_of(c.post("/api/cameras/cam-gone/settings", json={"max_fps": 2}),
                        503)["code"] == "camera_offline"
        assert error_of(c.post("/api/cameras/nope/settings", json={"max_fps": 2}),
                        404)["code"] == "unknown_camera"


# -- login, roles, CSRF, logs ----------------------------------------------------------------------
def test_token_is_required_everywhere(stack):
    with client(stack, token=None) as c:
        for path in ("/api/cameras", "/api/cameras/cam-1/frames", "/api/openapi.json",
                     "/api/cameras/cam-1/frames/1/machine.png", "/api/live"):
            assert error_of(c.get(path), 401)["code"] == "unauthorized"
        r = c.get("/cameras/cam-1?class_name=person")
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=%2Fcameras%2Fcam-1%3Fclass_name%3Dperson"
        assert c.post("/api/cameras/cam-1/frames/1/human").status_code == 401
    with client(stack, token="wrong-token-000") as c:
        assert c.get("/api/cameras").status_code == 401
    with httpx.Client(base_url=stack["console"].url, cookies={
            "icm_console_session": "admin.9999999999.abc.0000"}) as c:
        assert c.get("/api/cameras").status_code == 401     # a forged cookie
    r = httpx.get(stack["console"].url + "/login", params={"token": "wrong-token-000"})
    assert r.status_code == 401 and "not valid" in r.text
    assert "set-cookie" not in r.headers


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_it(stack):
    c = httpx.Client(base_url=stack["console"].url)
    r = c.get("/login", params={"token": VIEWER, "next": "//evil.example/x"})
    assert r.status_code == 303 and r.headers["location"] == "/cameras"   # no open redirect
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert VIEWER not in r.headers["set-cookie"]
    assert c.get("/api/cameras").status_code == 200
    csrf = c.get("/cameras").text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    assert c.post("/logout", data={"csrf_token": "x"}).status_code == 403
    r = c.post("/logout", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert c.get("/api/cameras").status_code == 401
    r = httpx.post(stack["console"].url + "/login", data={"token": ADMIN, "next": "/live"})
    assert r.status_code == 303 and r.headers["location"] == "/live"


def test_csrf_and_roles(stack):
    viewer, csrf = login(stack, VIEWER)
    url = "/api/cameras/cam-1/frames/1/human"
    assert error_of(viewer.post(url), 403)["code"] == "csrf"
    assert error_of(viewer.post(url, headers={"x-csrf-token": "0" * 64}), 403)["code"] == "csrf"
    assert error_of(viewer.post(url, headers={"x-csrf-token": csrf,
                                              "origin": "https://evil.example"}), 403)
    assert error_of(viewer.post(url, headers={"x-csrf-token": csrf,
                                              "sec-fetch-site": "cross-site"}), 403)
    assert viewer.post(url, headers={"x-csrf-token": csrf}).status_code in (200, 202)
    # settings: admins only, and never with another session's CSRF token
    s = "/api/cameras/cam-1/settings"
    edge = stack["edges"]["cam-1"]
    before = edge.encoder.current
    other = next(m for m in edge.encoder.available_bases() if m != before)
    assert error_of(viewer.post(s, json={"base_model_id": other},
                                headers={"x-csrf-token": csrf}), 403)["code"] == "forbidden"
    admin, admin_csrf = login(stack, ADMIN)
    assert error_of(admin.post(s, json={"base_model_id": other},
                               headers={"x-csrf-token": csrf}), 403)["code"] == "csrf"
    r = admin.post(s, json={"base_model_id": other}, headers={"x-csrf-token": admin_csrf})
    assert r.status_code == 200, r.text
    wait_for(lambda: edge.encoder.current == other, 30, "the edge to switch its base model")
    r = admin.post("/cameras/cam-1/settings", data={"base_model_id": before, "max_fps": "",
                                                    "csrf_token": admin_csrf},
                   follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("?saved=1")
    wait_for(lambda: edge.encoder.current == before, 30, "the form's switch back")


def test_no_token_in_logs(stack):
    c = httpx.Client(base_url=stack["console"].url)
    c.get("/login", params={"token": ADMIN})
    c.get("/login", params={"token": "wrong-token-999"})
    with client(stack, VIEWER) as b:
        b.get("/api/cameras")
    text = "\n".join(stack["logs"].lines)
    assert "GET /login 303" in text and "GET /api/cameras 200" in text
    for secret in (ADMIN, VIEWER, "wrong-token-999", CLOUD_TOKEN):
        assert secret not in text


def test_openapi_lists_the_api(stack):
    with client(stack, VIEWER) as c:
        spec = c.get("/api/openapi.json").json()
    paths = spec["paths"]
    for p in ("/api/cameras", "/api/cameras/{camera_id}/frames",
              "/api/cameras/{camera_id}/frames/{frame_id}/human", "/api/live"):
        assert p in paths
    assert not any(p.startswith("/login") for p in paths)


# -- human views -------------------------------------------------------------------------------
def test_human_view_job(stack):
    with client(stack) as c:
        r = c.post("/api/cameras/cam-1/frames/4/human", params={"wait": 90})
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["state"] == "done" and job["enhancement_bytes"] > 0
        assert job["total_bpp"] == pytest.approx(job["base_bpp"] + job["enhancement_bpp"],
                                                 abs=1e-4)
        img = c.get(job["image"])
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert c.get("/api/cameras/cam-1/frames/4/human").json()["state"] == "done"
        assert c.get("/api/cameras/cam-1/frames/4").json()["human_view_cached"] is True


def test_human_view_of_an_offline_camera(stack):
    with client(stack) as c:
        r = c.post("/api/cameras/cam-gone/frames/1/human", params={"wait": 60})
        err = error_of(r, 503)
        assert err["code"] == "camera_offline" and "offline" in err["message"]
        assert c.get("/api/cameras/cam-gone/frames/1/human").json()["state"] == "failed"
        assert error_of(c.post("/api/cameras/cam-gone/frames/7/human"), 404)


def test_human_view_no_longer_retained(stack):
    with client(stack) as c:
        err = error_of(c.post("/api/cameras/cam-forget/frames/1/human", params={"wait": 60}),
                       410)
        assert err["code"] == "not_retained" and "no longer keeps" in err["message"]


# -- live events -------------------------------------------------------------------------------
def test_live_events(stack):
    got: list[dict] = []
    ready = threading.Event()

    def listen() -> None:
        with client(stack, VIEWER) as c, c.stream("GET", "/api/live",
                                                  params={"camera_id": "cam-1"}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            event = ""
            for line in r.iter_lines():
                ready.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "frame":
                    got.append(json.loads(line[6:]))
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(30)
    time.sleep(0.5)     # the console's watch stream is open at the cloud
    edge = stack["edges"]["cam-1"]
    fid = edge.capture_one(stack["frames"][5])
    assert edge.wait_drained(60)
    t.join(30)
    assert got and got[0]["frame_id"] == fid and got[0]["camera_id"] == "cam-1"
    with client(stack, VIEWER) as c:
        r = c.get(got[0]["links"]["thumbnail"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"


# -- speed: a camera with 100k frames --------------------------------------------------------------
def _fill(db: Path, n: int) -> None:
    """n stored frames of one camera, written as the cloud writes them (every 7th with a
    person, every frame with a thumbnail), straight into the database: streaming 100k frames
    through the codec would take hours on CPU."""
    from analytics.results import Detection
    from cloud_decoder.storage import CameraRow, FrameRow, open_store

    thumb = Image.new("RGB", (256, 192), (40, 90, 140))
    import io

    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=75)
    store = open_store(str(db))
    store.upsert_camera(CameraRow("big", 768, 576, "base-x", "", "gone:1", False, T0_US))
    batch = []
    for i in range(1, n + 1):
        dets = ([Detection(0, "person", 0.9, (10.0, 20.0, 110.0, 300.0), model="yolo11n")]
                if i % 7 == 0 else [])
        batch.append(FrameRow("big", i, T0_US + i * 100_000, T0_US + i * 100_000 + 5,
                              T0_US + i * 100_000 + 9, 768, 576, 9000, 0.163, dets,
                              b"\0" * 16, thumbnail=buf.getvalue()))
        if len(batch) == 5000:
            store.add_frames(batch)
            batch = []
    if batch:
        store.add_frames(batch)
    store.close()


@pytest.mark.slow
def test_pages_are_fast_with_100k_frames(tmp_path):
    db = tmp_path / "big.sqlite3"
    t0 = time.perf_counter()
    _fill(db, 100_000)
    fill_s = time.perf_counter() - t0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 100_000
    cloud = CloudServer(CloudConfig(listen="127.0.0.1:0", db=str(db), decoder="noop",
                                    detectors=[])).start()
    try:
        with ConsoleServer(ConsoleConfig(cloud=f"127.0.0.1:{cloud.port}", viewer_token=VIEWER),
                           port=0) as console, httpx.Client(
                base_url=console.url, headers={"authorization": f"Bearer {VIEWER}"}) as c:
            c.get("/cameras")   # first call: channel set-up
            times = {}
            for name, path in (
                    ("cameras", "/cameras"),
                    ("frames, newest page", "/cameras/big"),
                    ("frames, deep page", "/cameras/big?before=50001"),
                    ("frames, person filter", "/cameras/big?class_name=person"),
                    ("frames, time range", f"/cameras/big?since={iso(T0_US + 3600_000_000)}"
                                           f"&until={iso(T0_US + 5400_000_000)}"),
                    ("frame view", "/cameras/big/frames/77777"),
                    ("json frames", "/api/cameras/big/frames?limit=200")):
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    r = c.get(path)
                    best = min(best, time.perf_counter() - t)
                    assert r.status_code == 200, (path, r.text[:300])
                times[name] = best
            page = c.get("/cameras/big?before=50001").text
            assert page.count('class="frame-card"') == 48 and "#50000" in page
            assert c.get("/cameras/big?class_name=person").text.count("1 person") == 48
            # thumbnails came with the page: served from the console's cache
            cache = console.app.state.caches["thumbnails"]
            assert len(cache) >= 48
            misses = cache.misses
            r = c.get("/api/cameras/big/frames/50000/thumbnail.jpg")
            assert r.status_code == 200 and cache.misses == misses
    finally:
        cloud.stop()
    print(f"\n100k frames written in {fill_s:.1f} s; best of 3 render times:")
    for name, s in times.items():
        print(f"  {name:24s} {1000 * s:7.1f} ms")
    for name, s in times.items():
        assert s < 1.0, f"{name} took {s:.2f} s"


# -- TLS: to a cloud that uses it, and the console's own HTTPS ------------------------------------
def test_tls_to_the_cloud_and_https(tmp_path):
    from icm_rpc.tls import TLSFiles, make_ca, make_cert

    pki = tmp_path / "pki"
    ca, _ = make_ca(pki)
    cert, key = make_cert(pki, "cloud", server=True)
    web_cert, web_key = make_cert(pki, "console", server=True)
    tls = TLSFiles(ca, cert, key)
    cloud = CloudServer(CloudConfig(listen="127.0.0.1:0", analyst_listen="127.0.0.1:0",
                                    db=str(tmp_path / "c.sqlite3"), detectors=[], tls=tls,
                                    analyst_token=CLOUD_TOKEN)).start()
    try:
        target = f"localhost:{cloud.analyst_port}"
        plain = ConsoleServer(ConsoleConfig(cloud=target, analyst_token=CLOUD_TOKEN,
                                            viewer_token=VIEWER), port=0).start()
        try:   # no CA: the console cannot talk to a TLS cloud, and says so (never a 500)
            r = httpx.get(plain.url + "/api/cameras", headers={"authorization": f"Bearer {VIEWER}"})
            assert error_of(r, 502)["code"] in ("cloud_unreachable", "cloud_error")
        finally:
            plain.stop()
        with ConsoleServer(ConsoleConfig(cloud=target, analyst_token=CLOUD_TOKEN,
                                         tls=TLSFiles(ca=ca), viewer_token=VIEWER),
                           port=0, ssl_certfile=str(web_cert), ssl_keyfile=str(web_key)) as web:
            assert web.url.startswith("https://")
            import ssl

            with httpx.Client(base_url=web.url,
                              verify=ssl.create_default_context(cafile=str(ca))) as c:
                r = c.get("/api/cameras", headers={"authorization": f"Bearer {VIEWER}"})
                assert r.status_code == 200 and r.json() == {"cameras": []}
                r = c.get("/login", params={"token": VIEWER})
                assert "secure" in r.headers["set-cookie"].lower()
        wrong = ConsoleServer(ConsoleConfig(cloud=target, analyst_token="not-the-token",
                                            tls=TLSFiles(ca=ca), viewer_token=VIEWER),
                              port=0).start()
        try:
            r = httpx.get(wrong.url + "/api/cameras", headers={"authorization": f"Bearer {VIEWER}"})
            assert error_of(r, 502)["code"] == "cloud_refused"
        finally:
            wrong.stop()
    finally:
        cloud.stop()


def test_thumbnails_without_ingest_are_made_once(tmp_path, photos):
    """--thumbnail-width 0: nothing kept at ingest; the first request makes and keeps one."""
    frame = np.asarray(Image.fromarray(photos[1]).resize((160, 128)))
    db = tmp_path / "c.sqlite3"
    with CloudServer(CloudConfig(listen="127.0.0.1:0", db=str(db), detectors=[],
                                 thumbnail_width=0)) as cloud:
        with EdgeService(EdgeConfig(camera_id="cam-t", cloud=f"127.0.0.1:{cloud.port}",
                                    spool_dir=tmp_path / "spool")) as edge:
            edge.capture_one(frame)
            assert edge.wait_drained(60)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM thumbnails").fetchone()[0] == 0
        with ConsoleServer(ConsoleConfig(cloud=f"127.0.0.1:{cloud.port}", viewer_token=VIEWER),
                           port=0) as console, httpx.Client(
                base_url=console.url, headers={"authorization": f"Bearer {VIEWER}"}) as c:
            r = c.get("/api/cameras/cam-t/frames/1/thumbnail.jpg")
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM thumbnails").fetchone()[0] == 1


@pytest.mark.slow
def test_icm_console_command(tmp_path):
    """The real command: with no token configured it makes one and prints its login link on
    stdout only (not in the log); an unreachable cloud is a clear 502; SIGTERM ends it."""
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ICM_")}
    env["OMP_NUM_THREADS"] = "1"
    from icm_app.main import main

    assert main(["console", "--listen", "nope"]) == 2         # a clear error, nothing served
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "icm_app", "console", "--listen",
                                 "127.0.0.1:0", "--cloud", "127.0.0.1:9"], stdout=fo, stderr=fe,
                                env=env)
        try:
            wait_for(lambda: "log in at" in out.read_text() or proc.poll() is not None, 120,
                     "the login link")
            m = re.search(r"log in at (http://127\.0\.0\.1:\d+)/login\?token=([\w-]+)",
                          out.read_text())
            assert m, out.read_text() + err.read_text()
            base, token = m.group(1), m.group(2)
            assert len(token) >= 24
            with httpx.Client(base_url=base) as c:
                r = c.get("/login", params={"token": token})
                assert r.status_code == 303 and "set-cookie" in r.headers
                assert error_of(c.get("/api/cameras"), 502)["code"] == "cloud_unreachable"
                assert c.get("/healthz").json() == {"status": "ok"}
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
    assert rc == 0
    log = err.read_text()
    assert "GET /login 303" in log and token not in log
