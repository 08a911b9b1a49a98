"""Shared fixtures. Data that needs ../shared comes through one setting: ICM_SHARED_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("ICM_SHARED_DIR", REPO.parent / "shared"))

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED_DIR / "README.md").is_file():
        pytest.skip(f"shared data not found at {SHARED_DIR} (set ICM_SHARED_DIR)")
    return SHARED_DIR


def skimage_photos() -> list[np.ndarray]:
    """Real photographs that scikit-image ships (RGB uint8)."""
    import skimage.data as d

    return [getattr(d, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a busy 2-core machine two OpenMP threads oversubscribe
    the cores and run several times slower (Ultralytics' own default on 2 cores is one, too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    return skimage_photos()


def _as_tensors(images: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in images]


@pytest.fixture(scope="session")
def trained_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A briefly trained base and enhancement (m=4) package: realistic spread of scales.

    Random init puts almost every scale at the table's lower bound, which hides boundary
    flips; after ~100 steps at a high lambda the scale indexes span most of the table.
    """
    from icm_codec import CodecConfig, create_model, save_package
    from icm_codec.training import fit_steps

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("trained")
    images = _as_tensors(skimage_photos())
    base = create_model(CodecConfig(kind="base", model_id="test-base"))
    fit_steps(base, images, 100, lmbda=0.05, lr=3e-4)
    base.freeze()
    base_path = out / "base.icmpkg"
    digest = save_package(base, base_path)
    from icm_codec import load_package

    frozen = load_package(base_path).model
    enh = create_model(CodecConfig(kind="enhancement", m=4, model_id="test-enh",
                                   base_digest=digest))

    def reference(x: torch.Tensor) -> torch.Tensor:
        return frozen.coder(frozen.g_a(x))["y_hat"]

    fit_steps(enh, images, 40, lmbda=0.05, lr=3e-4, reference=reference)
    enh.freeze()
    enh_path = out / "enh.icmpkg"
    save_package(enh, enh_path)
    return {"base": base_path, "enhancement": enh_path}


@pytest.fixture(scope="session")
def package_factory(tmp_path_factory: pytest.TempPathFactory):
    """Seeded, untrained packages of any kind: ``make(kind, m=4, base=None, seed=0)``."""
    from icm_codec import CodecConfig, create_model, load_package, save_package

    out = tmp_path_factory.mktemp("packages")
    cache: dict[tuple, Path] = {}

    def make(kind: str = "base", m: int = 4, base: Path | None = None, seed: int = 0,
             arch: str = "lite", N: int = 128) -> Path:
        key = (kind, m, base, seed, arch, N)
        if key not in cache:
            torch.manual_seed(seed)
            digest = load_package(base).digest if base else ""
            cfg = CodecConfig(kind=kind, m=m, arch=arch, N=N, base_digest=digest,
                              model_id=f"{kind}-{arch}-m{m}-s{seed}")
            model = create_model(cfg)
            model.freeze()
            path = out / f"{kind}-{arch}-{N}-m{m}-s{seed}-{len(cache)}.icmpkg"
            save_package(model, path)
            cache[key] = path
        return cache[key]

    return make
