"""``icm demo`` end to end on a small generated video (real cloud, edge and analyst calls)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icm_app.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _video(path: Path, photos: list[np.ndarray], n: int = 3) -> Path:
    import cv2

    frame = np.asarray(Image.fromarray(photos[1]).resize((192, 128)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (192, 128))
    for i in range(n):
        writer.write(cv2.cvtColor(np.roll(frame, 5 * i, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_demo_streams_and_writes_both_images(tmp_path, photos, capsys):
    video = _video(tmp_path / "clip.avi", photos)
    out = tmp_path / "demo"
    rc = main(["demo", "--video", str(video), "--frames", "3", "--detectors", "none",
               "--metrics-port", "-1", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert text.count(" bpp  ") == 3  # one line per stored frame
    machine, human = sorted(out.glob("frame*_machine.png")), sorted(out.glob("frame*_human.png"))
    assert len(machine) == 1 and len(human) == 1
    for p in (machine[0], human[0]):
        assert Image.open(p).size == (192, 128)
    assert "human image" in text and "3 frames in" in text
    # the web console ran beside them: its login link (a fresh token) came first
    console = [line for line in text.splitlines() if "console" in line]
    assert console and re.search(r"http://127\.0\.0\.1:\d+/login\?token=[\w-]{20,}",
                                 console[0]), console
    assert text.index(console[0]) < text.index("frame ")


def test_demo_without_detector_weights_says_how_to_get_them(tmp_path, photos, capsys):
    video = _video(tmp_path / "clip.avi", photos, n=1)
    rc = main(["demo", "--video", str(video), "--weights-dir", str(tmp_path / "empty"),
               "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--weights-dir" in err and "--detectors none" in err
    assert not (tmp_path / "demo").exists()  # nothing started, nothing written
