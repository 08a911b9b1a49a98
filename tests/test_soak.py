"""Short versions of the soak and fuzz scripts (scripts/soak.py, scripts/fuzz_services.py;
their full-scale figures are in docs/services.md): the same code, minutes and counts cut."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _script(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_soak_short(tmp_path) -> None:
    """12 cameras for 15 s against one cloud process (no-op decoder): nothing lost or stored
    twice, the cloud's memory flat."""
    soak = _script("soak")
    r = soak.run_soak(cameras=12, seconds=15, fps=4, decoder="noop", size=(96, 64),
                      warmup_s=3, drain_s=60, work=tmp_path, quiet=True)
    assert r["cloud_alive"] and r["left_pending"] == 0, r
    assert r["captured"] >= 12 * 15 * 4 * 0.8, r               # the feeder kept up
    assert (r["lost"], r["stored_twice"]) == (0, 0), r
    assert r["stored"] == r["captured"], r
    assert r["rss_end_mb"] - r["rss_start_mb"] < 60, r


def test_fuzz_short(tmp_path) -> None:
    fuzz = _script("fuzz_services")
    r = fuzz.fuzz_edge_link(600, seed=1, work=tmp_path)
    assert r["untyped"] == 0 and r["cloud_alive"] and r["good_stored_once"], r
    assert set(r["codes"]) <= {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, r
    r = fuzz.fuzz_layers(300, seed=1)
    assert (r["crash"], r["wrong_size"]) == (0, 0), r
    assert r["decoded"] > 0 and r["rejected"] > 0, r
