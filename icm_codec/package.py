"""Model packages: weights + config + ready entropy tables + digest, in one zip file.

A package is what the services load. It stores the frozen integer weights and the quantized
CDF tables, so no machine recomputes them from floats, and a SHA-256 digest over the config and
every tensor. The digest is verified on load and written into every bitstream the model makes.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import CodecConfig
from .errors import ModelPackageError
from .models import LayerCodec, create_model

__all__ = ["ModelPackage", "load_package", "package_digest", "save_package"]

PACKAGE_FORMAT = "icm-model-package"
PACKAGE_VERSION = 1
_MAX_PACKAGE_BYTES = 1 << 30


@dataclass
class ModelPackage:
    """A loaded, verified model."""

    model: LayerCodec
    config: CodecConfig
    digest: str  # hex SHA-256

    @property
    def digest_bytes(self) -> bytes:
        return bytes.fromhex(self.digest)


def _exact_dtype(name: str, t: Tensor, half: bool) -> Tensor:
    """Storage dtype: integers stay exact; float weights may be stored in fp16."""
    if not t.is_floating_point():
        return t
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "w_int":
        return t.to(torch.int8)
    if leaf in ("mult", "bias_int", "shift"):
        return t.to(torch.int64)
    if half and name.startswith(("g_a.", "g_s.", "coder.h_a.")):
        return t.half()  # float transforms are off the exact path: fp16 halves the package
    return t  # entropy models, medians, scale table: stored as they are


def _training_only(model: nn.Module) -> set[str]:
    """Float weights of the integer networks: needed to train, never to code (the frozen
    integer copies are what encoder and decoder use), so packages leave them out."""
    from .intnet import IntConv2d

    return {f"{name}.{leaf}" for name, m in model.named_modules() if isinstance(m, IntConv2d)
            for leaf in ("weight", "bias")}


def package_digest(config: CodecConfig, state: dict[str, Tensor]) -> str:
    """SHA-256 over the config JSON and every tensor (name, dtype, shape, bytes) in key order."""
    h = hashlib.sha256()
    h.update(config.to_json().encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_package(model: LayerCodec, path: str | Path, *, half: bool = True) -> str:
    """Freeze-check and write ``model`` to ``path``; returns the digest."""
    if not all(m.frozen for m in model.modules() if hasattr(m, "frozen")):
        raise ModelPackageError("model is not frozen: call model.freeze() before saving")
    skip = _training_only(model)
    state = {k: _exact_dtype(k, v.detach().cpu(), half) for k, v in model.state_dict().items()
             if k not in skip}
    digest = package_digest(model.config, state)
    buf = io.BytesIO()
    torch.save(state, buf)
    manifest = {"format": PACKAGE_FORMAT, "version": PACKAGE_VERSION, "digest": digest,
                "model_id": model.config.model_id}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
        zf.writestr("config.json", model.config.to_json())
        zf.writestr("weights.pt", buf.getvalue())
    tmp.replace(path)
    return digest


def _fit_buffers(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Resize registered buffers (frozen weights, CDF tables) to the shapes in ``state``."""
    for name, buf in list(model.named_buffers()):
        if name in state and state[name].shape != buf.shape:
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            owner._buffers[leaf] = torch.empty_like(buf).resize_(state[name].shape)


def load_package(path: str | Path, device: str | torch.device = "cpu") -> ModelPackage:
    """Load and verify a package; raises :class:`ModelPackageError` with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise ModelPackageError(f"model package not found: {path}")
    if path.stat().st_size > _MAX_PACKAGE_BYTES:
        raise ModelPackageError(f"model package too large: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            config_dict = json.loads(zf.read("config.json"))
            raw = zf.read("weights.pt")
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as e:
        raise ModelPackageError(f"not a model package: {path} ({e})") from e
    if manifest.get("format") != PACKAGE_FORMAT:
        raise ModelPackageError(f"not a model package: {path}")
    if manifest.get("version", 0) > PACKAGE_VERSION:
        raise ModelPackageError(
            f"model package version {manifest.get('version')} is newer than this library "
            f"supports ({PACKAGE_VERSION}): upgrade icm")
    try:
        config = CodecConfig.from_dict(config_dict)
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt pickle or config
        raise ModelPackageError(f"corrupt model package {path}: {e}") from e
    digest = package_digest(config, state)
    if digest != manifest.get("digest"):
        raise ModelPackageError(f"model package digest mismatch (corrupted file?): {path}")
    model = create_model(config)
    _fit_buffers(model, state)
    own = model.state_dict()
    cast = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    missing = set(own) - set(cast) - _training_only(model)
    unexpected = set(cast) - set(own)
    if missing or unexpected:
        raise ModelPackageError(f"weights do not fit the architecture in {path}: missing "
                                f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    try:
        model.load_state_dict(cast, strict=False)
    except RuntimeError as e:
        raise ModelPackageError(f"weights do not fit the architecture in {path}: {e}") from e
    from .intnet import IntConv2d

    for m in model.modules():
        if isinstance(m, IntConv2d):
            m.restore_float()  # training path (fine-tuning, frozen-base references) = exact path
    model.eval().to(device)
    return ModelPackage(model=model, config=config, digest=digest)
