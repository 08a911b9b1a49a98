"""The training loop behind ``icm train``: resumable, logged, and exporting model packages.

    base         L = R(y) + R(z) + λ·mse(x⊙m, x̂⊙m)       (mask: edges / objects / full)
    enhancement  L = R(ya) + R(za) + λ·mse(x, x̂_human)     (base frozen)
    residual     L = R + λ·mse(x, x̂_machine + r̂)          (difference compression, base frozen)
    single       L = R(y) + R(z) + λ·mse(x, x̂)

A run directory holds ``last.pt`` (model, optimizers, scheduler, step, RNG: written atomically
every ``checkpoint_minutes``), ``metrics.csv`` and the exported ``model.icmpkg``. Starting the
same command again resumes from ``last.pt``; a killed run loses at most one interval.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import CodecConfig
from ..losses import psnr, rate_distortion_loss
from ..models import LayerCodec, create_model
from ..package import load_package, save_package
from ..training import make_optimizers
from .data import Sample, load_dataset
from .masks import MaskMaker

__all__ = ["TrainConfig", "train"]


@dataclass
class TrainConfig:
    kind: str  # base | enhancement | residual | single
    data: list[str]
    lmbda: float
    out: str = "runs/model"
    mask: str = ""  # default: edges for base, full otherwise
    alpha: float = 0.93
    band: int = 3
    sam_checkpoint: str | None = None
    seg_weights: str | None = None
    annotations: str | None = None
    base: str | None = None  # package of the frozen base (enhancement / residual)
    arch: str = "lite"
    N: int = 128
    m: int = 4
    model_id: str = ""
    steps: int = 20000
    batch: int = 8
    crop: int = 128
    lr: float = 1e-4
    lr_drops: tuple[float, ...] = (0.75, 0.9)  # fractions of steps where lr is divided by 10
    clip: float = 1.0
    device: str = "cpu"
    seed: int = 0
    checkpoint_minutes: float = 5.0
    val_every: int = 500
    max_side: int = 1024
    video_stride: int = 5
    threads: int = 0
    extra: dict = field(default_factory=dict)

    def mask_kind(self) -> str:
        return self.mask or ("edges" if self.kind == "base" else "full")


class _Batches:
    """Seeded random crops (and their masks) from in-memory samples."""

    def __init__(self, samples: list[Sample], masks: list[np.ndarray], crop: int,
                 seed: int) -> None:
        keep = [i for i, s in enumerate(samples) if min(s.image.shape[:2]) >= crop]
        if not keep:
            raise ValueError(f"no training image is at least {crop}x{crop}")
        self.samples = [samples[i] for i in keep]
        self.masks = [masks[i] for i in keep]
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def next(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ms = [], []
        c = self.crop
        for _ in range(batch):
            i = int(self.rng.integers(len(self.samples)))
            img, mask = self.samples[i].image, self.masks[i]
            r = int(self.rng.integers(img.shape[0] - c + 1))
            q = int(self.rng.integers(img.shape[1] - c + 1))
            patch, mpatch = img[r : r + c, q : q + c], mask[r : r + c, q : q + c]
            if self.rng.random() < 0.5:
                patch, mpatch = patch[:, ::-1], mpatch[:, ::-1]
            xs.append(np.ascontiguousarray(patch))
            ms.append(np.ascontiguousarray(mpatch))
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255)
        m = torch.from_numpy(np.stack(ms)).unsqueeze(1).float()
        return x, m


def _val_tensors(samples: list[Sample], masks: list[np.ndarray], size: int = 256,
                 limit: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for s, m in list(zip(samples, masks, strict=True))[:limit]:
        h, w = s.image.shape[:2]
        if min(h, w) < 64:
            continue
        hh, ww = min(size, h) // 64 * 64, min(size, w) // 64 * 64
        r, c = (h - hh) // 2, (w - ww) // 2
        x = torch.from_numpy(np.ascontiguousarray(s.image[r : r + hh, c : c + ww]))
        mt = torch.from_numpy(np.ascontiguousarray(m[r : r + hh, c : c + ww]))
        out.append((x.permute(2, 0, 1)[None].float() / 255, mt[None, None].float()))
    return out


class _Reference:
    """What a dependent layer needs from the frozen base: ŷ (fusion) or x̂_machine (DC)."""

    def __init__(self, base: LayerCodec | None, kind: str) -> None:
        self.base, self.kind = base, kind

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.base is None:
            return None
        y_hat = self.base.coder(self.base.g_a(x))["y_hat"]
        if self.kind == "enhancement":
            return y_hat
        return self.base.g_s(y_hat).clamp(0, 1)


def _build(cfg: TrainConfig) -> tuple[LayerCodec, LayerCodec | None]:
    base = None
    digest = ""
    if cfg.kind in ("enhancement", "residual"):
        if not cfg.base:
            raise ValueError(f"training a {cfg.kind} model needs --base PACKAGE")
        pkg = load_package(cfg.base, cfg.device)
        base, digest = pkg.model.eval(), pkg.digest
        for p in base.parameters():
            p.requires_grad_(False)
    model_id = cfg.model_id or f"{cfg.kind}-{cfg.arch}-l{cfg.lmbda:g}"
    config = CodecConfig(kind=cfg.kind, arch=cfg.arch, N=cfg.N, m=cfg.m, model_id=model_id,
                         base_digest=digest)
    return create_model(config).to(cfg.device), base


def _lr_at(cfg: TrainConfig, step: int) -> float:
    drops = sum(step >= f * cfg.steps for f in cfg.lr_drops)
    return cfg.lr * (0.1**drops)


@torch.no_grad()
def _validate(model: LayerCodec, ref: _Reference, val: list, lmbda: float, device: str
              ) -> dict[str, float]:
    model.eval()
    bpps, mses, masked = [], [], []
    for x, m in val:
        x, m = x.to(device), m.to(device)
        out = model(x, ref(x))
        t = rate_distortion_loss(out, x, lmbda)
        bpps.append(float(t["bpp"]))
        err = (out["x_hat"].clamp(0, 1) - x).pow(2)
        mses.append(float(err.mean()))
        denom = float(m.sum()) * 3
        if denom > 0:
            masked.append(float((err * m).sum()) / denom)
    model.train()
    if not bpps:
        return {}
    return {"val_bpp": float(np.mean(bpps)), "val_psnr": float(np.mean([psnr(v) for v in mses])),
            "val_psnr_mask": float(np.mean([psnr(v) for v in masked])) if masked else math.nan}


def train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Train (or resume) and export ``<out>/model.icmpkg``; returns its path."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model, base = _build(cfg)
    ref = _Reference(base, cfg.kind)
    opt, aux_opt = make_optimizers(model, cfg.lr)
    ckpt_path = out / "last.pt"
    step, wall = 0, 0.0
    rng_state = None
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=cfg.device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        aux_opt.load_state_dict(ck["aux_opt"])
        step, wall, rng_state = ck["step"], ck["wall"], ck["rng"]
        print(f"resuming {ckpt_path} at step {step}")
    train_s, val_s = load_dataset(cfg.data, max_side=cfg.max_side,
                                  video_stride=cfg.video_stride, annotations=cfg.annotations,
                                  progress=progress)
    maker = MaskMaker(cfg.mask_kind(), out.parent / ".mask-cache", alpha=cfg.alpha,
                      band=cfg.band, sam_checkpoint=cfg.sam_checkpoint,
                      seg_weights=cfg.seg_weights, device=cfg.device)
    masks = [maker(s) for s in tqdm(train_s + val_s, desc=f"{maker.kind} masks",
                                    disable=not progress)]
    batches = _Batches(train_s, masks[: len(train_s)], cfg.crop, cfg.seed + step)
    if rng_state is not None:
        batches.rng.bit_generator.state = rng_state
    val = _val_tensors(val_s, masks[len(train_s):])
    use_mask = cfg.kind == "base" and cfg.mask_kind() != "full"

    log_path = out / "metrics.csv"
    new_log = not log_path.is_file()
    log_f = log_path.open("a", newline="")
    log = csv.writer(log_f)
    if new_log:
        log.writerow(["step", "loss", "bpp", "mse", "psnr", "lr", "aux", "val_bpp",
                      "val_psnr", "val_psnr_mask", "wall_s"])

    def checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "aux_opt": aux_opt.state_dict(), "step": step, "wall": wall,
                    "rng": batches.rng.bit_generator.state,
                    "config": dataclasses.asdict(cfg)}, tmp)
        tmp.replace(ckpt_path)

    model.train()
    last_ckpt = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.kind} λ={cfg.lmbda:g}",
               disable=not progress, dynamic_ncols=True)
    try:
        while step < cfg.steps:
            t0 = time.monotonic()
            lr = _lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            x, m = batches.next(cfg.batch)
            x, m = x.to(cfg.device), m.to(cfg.device)
            res = model(x, ref(x))
            terms = rate_distortion_loss(res, x, cfg.lmbda, m if use_mask else None)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            aux = model.aux_loss()
            aux_opt.zero_grad(set_to_none=True)
            aux.backward()
            aux_opt.step()
            step += 1
            wall += time.monotonic() - t0
            p = psnr(float(terms["mse_full"].detach()))
            row = {"step": step, "loss": float(terms["loss"].detach()),
                   "bpp": float(terms["bpp"].detach()), "mse": float(terms["mse"].detach()),
                   "psnr": p, "lr": lr, "aux": float(aux.detach())}
            if step % cfg.val_every == 0 or step == cfg.steps:
                row |= _validate(model, ref, val, cfg.lmbda, cfg.device)
                bar.write(f"step {step}: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in row.items() if k.startswith("val")))
            if step % 10 == 0 or "val_bpp" in row:
                log.writerow([row.get(k, "") for k in ("step", "loss", "bpp", "mse", "psnr",
                                                        "lr", "aux", "val_bpp", "val_psnr",
                                                        "val_psnr_mask")] + [f"{wall:.1f}"])
                log_f.flush()
            bar.set_postfix(loss=f"{row['loss']:.3g}", bpp=f"{row['bpp']:.3f}", psnr=f"{p:.2f}")
            bar.update(1)
            if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                checkpoint()
                last_ckpt = time.monotonic()
    finally:
        bar.close()
        checkpoint()
        log_f.close()
    return export(model, cfg, out / "model.icmpkg", step=step, wall=wall,
                  n_train=len(train_s))


def export(model: LayerCodec, cfg: TrainConfig, path: Path, *, step: int, wall: float,
           n_train: int) -> Path:
    """Freeze (integer weights, CDF tables) and write the model package with its record."""
    model = model.to("cpu").eval()
    model.config.meta = {
        "trained": True, "lambda": cfg.lmbda, "mask": cfg.mask_kind(), "alpha": cfg.alpha,
        "data": cfg.data, "train_images": n_train, "steps": step, "wall_s": round(wall),
        "device": cfg.device, "batch": cfg.batch, "crop": cfg.crop,
        "torch": torch.__version__,
    }
    model.freeze()
    save_package(model, path)
    print(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path
