"""Screenshots of every page of the web console, for docs/console.md.

Runs the real system on this machine: a cloud decoder with the YOLO26n instance segmenter, two
edge encoders streaming frames of the shared surveillance clip (gate-2 then goes offline),
the console, and Debian's Chromium driven by Playwright (no browser download):

    python scripts/console_screenshots.py --video ../shared/data/video/vtest.avi \
        --weights-dir ../shared/assets/detectors --out docs/console

Needs the console and dev extras (fastapi, uvicorn, playwright) and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic"]


def video_frames(path: str, n: int, step: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(path)
    out = []
    while len(out) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(np.ascontiguousarray(bgr[:, :, ::-1]))
        for _ in range(step - 1):
            cap.grab()
    cap.release()
    if len(out) < n:
        raise SystemExit(f"{path}: only {len(out)} frames")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(ROOT.parent / "shared/data/video/vtest.avi"))
    ap.add_argument("--weights-dir", default=str(ROOT.parent / "shared/assets/detectors"))
    ap.add_argument("--detectors", default="yolo26n-seg")
    ap.add_argument("--frames", type=int, default=9, help="frames gate-1 streams first")
    ap.add_argument("--out", default=str(ROOT / "docs" / "console"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()

    import torch
    from playwright.sync_api import sync_playwright

    from cloud_decoder import CloudConfig, CloudServer
    from console import ConsoleConfig, ConsoleServer, login_url, new_token
    from edge_encoder import EdgeConfig, EdgeService

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="icm-shots-"))
    frames = video_frames(args.video, args.frames + 4, step=8)
    token = new_token()
    cloud = CloudServer(CloudConfig(listen="127.0.0.1:0", db=str(work / "cloud.sqlite3"),
                                    detectors=args.detectors.split(","),
                                    weights_dir=args.weights_dir, analyst_token=token)).start()
    edges = {cam: EdgeService(EdgeConfig(camera_id=cam, cloud=f"127.0.0.1:{cloud.port}",
                                         spool_dir=work / cam)).start()
             for cam in ("gate-1", "gate-2")}
    console = None
    try:
        now = time.time_ns() // 1000
        n = args.frames
        for i, f in enumerate(frames[:n]):
            edges["gate-1"].capture_one(f, capture_us=now - (n - i) * 2_000_000)
        for f in frames[n:n + 2]:
            edges["gate-2"].capture_one(f)
        for e in edges.values():
            e.wait_drained(600)
        edges.pop("gate-2").stop()
        console = ConsoleServer(ConsoleConfig(cloud=f"127.0.0.1:{cloud.port}",
                                              analyst_token=token, admin_token=token,
                                              page_size=12), port=0).start()
        url = console.url
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(work / "profile"), executable_path=args.chromium, headless=True,
                args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 820})
            ctx.set_default_timeout(120_000)
            page = ctx.new_page()

            def shot(name: str, full: bool = False) -> None:
                # JPEG: the pages are mostly video frames (a PNG of one is ~700 KB)
                page.screenshot(path=str(out / f"{name}.jpg"), full_page=full, type="jpeg",
                                quality=82)
                print(f"wrote {out / name}.jpg")

            page.goto(url + "/login")
            shot("login")
            page.goto(login_url(url, token))
            shot("cameras")
            page.goto(url + "/cameras/gate-1")
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            shot("frames")
            busiest = page.eval_on_selector_all(
                ".frame-card", "cs => cs.map(c => [c.querySelectorAll('rect.box').length, "
                "c.dataset.frameId]).sort((a, b) => b[0] - a[0])[0][1]")
            page.goto(f"{url}/cameras/gate-1/frames/{busiest}")
            page.click("#human-button")
            page.wait_for_selector("#human-status progress")
            shot("human-progress")
            page.wait_for_function(
                "() => document.getElementById('human-img').naturalWidth > 0")
            page.locator("#compare-slider").fill("50")
            shot("frame", full=True)
            page.goto(f"{url}/cameras/gate-2/frames/1")
            page.click("#human-button")
            page.wait_for_selector("#human-status.problem")
            shot("offline")
            page.goto(f"{url}/live")
            page.wait_for_function(
                "() => document.getElementById('live-status').textContent.startsWith('conn')")
            for f in frames[n + 2:]:
                edges["gate-1"].capture_one(f)
            edges["gate-1"].wait_drained(600)
            page.wait_for_function("() => document.querySelectorAll('#live img').length >= 2 &&"
                                   " [...document.images].every(i => i.complete)")
            shot("live")
            page.goto(f"{url}/cameras/gate-1/settings")
            shot("settings")
            ctx.close()
    finally:
        if console is not None:
            console.stop()
        for e in edges.values():
            e.stop()
        cloud.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
