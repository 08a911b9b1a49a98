"""The training loop behind ``icm train``: resumable, logged, and exporting model packages.

    base         L = R(y) + R(z) + λ·mse(x⊙m, x̂⊙m)       (mask: edges / objects / full)
    enhancement  L = R(ya) + R(za) + λ·mse(x, x̂_human)     (base frozen)
    residual     L = R + λ·mse(x, x̂_machine + r̂)          (difference compression, base frozen)
    single       L = R(y) + R(z) + λ·mse(x, x̂)

A run directory holds ``last.pt`` (model, optimizers, weight average, learning-rate schedule,
step, data RNG: written atomically every ``checkpoint_minutes``), ``metrics.csv`` and the
exported ``model.icmpkg`` (the averaged weights, refreshed every ``export_minutes`` and at the
end). Starting the same command again resumes from ``last.pt``; a killed run loses at most one
interval. Without a checkpoint, ``init`` warm-starts from a package or another run.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import fcntl
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import CodecConfig
from ..kinds import LayerKind
from ..losses import loss_weights, psnr, rate_distortion_loss
from ..models import LayerCodec, base_reference, create_model
from ..package import load_package, save_package
from ..registry import find_package
from ..training import (
    LRSchedule,
    WeightEMA,
    make_optimizers,
    refit_density,
    set_lr,
    train_step,
    z_rate_weight,
)
from .config import TrainConfig
from .data import VIDEO_EXTS, Sample, load_dataset
from .guard import DivergenceGuard, validation_objective
from .masks import MaskMaker
from .stopping import stop_signals_interrupt

__all__ = ["TrainConfig", "train"]


def _is_video(sample: Sample) -> bool:
    return "#" in sample.key and Path(sample.key.rsplit("#", 1)[0]).suffix.lower() in VIDEO_EXTS


def sampling_weights(samples: list[Sample], video_share: float) -> np.ndarray:
    """Probability of drawing each sample: every still image alike, and all frames of the
    videos together at most ``video_share`` (one static, already-compressed scene would
    otherwise give a large share of all crops)."""
    video = np.array([_is_video(s) for s in samples])
    w = np.ones(len(samples))
    n_vid, n_img = int(video.sum()), int((~video).sum())
    if n_vid and n_img:
        share = min(video_share, n_vid / len(samples))
        w[video] = share / n_vid
        w[~video] = (1 - share) / n_img
    return w / w.sum()


class _Batches:
    """Seeded random crops (and their masks) from in-memory samples, balanced by source and
    randomly downscaled (a crop of ``crop / s`` pixels resized to ``crop``, s in
    ``[min_scale, 1]``), so the codec sees objects at more than one scale."""

    def __init__(self, samples: list[Sample], masks: list[np.ndarray], crop: int,
                 seed: int, *, video_share: float = 1.0, min_scale: float = 1.0) -> None:
        keep = [i for i, s in enumerate(samples) if min(s.image.shape[:2]) >= crop]
        if not keep:
            raise ValueError(f"no training image is at least {crop}x{crop}")
        self.samples = [samples[i] for i in keep]
        self.masks = [masks[i] for i in keep]
        self.p = sampling_weights(self.samples, video_share)
        self.crop = crop
        self.min_scale = min_scale
        self.rng = np.random.default_rng(seed)

    def fork(self, seed: int) -> _Batches:
        """The same samples with an RNG of their own (the training stream is left as it is)."""
        other = copy.copy(self)
        other.rng = np.random.default_rng(seed)
        return other

    def _window(self, img: np.ndarray) -> int:
        """Side of the source window: crop / s for a random scale s the image allows."""
        largest = min(img.shape[:2])
        lo = max(self.min_scale, self.crop / largest)
        if lo >= 1.0:
            return self.crop
        s = float(np.exp(self.rng.uniform(np.log(lo), 0.0)))
        return min(largest, round(self.crop / s))

    def next(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        xs, ms = [], []
        c = self.crop
        for _ in range(batch):
            i = int(self.rng.choice(len(self.samples), p=self.p))
            img, mask = self.samples[i].image, self.masks[i]
            win = self._window(img)
            r = int(self.rng.integers(img.shape[0] - win + 1))
            q = int(self.rng.integers(img.shape[1] - win + 1))
            patch, mpatch = img[r : r + win, q : q + win], mask[r : r + win, q : q + win]
            if win != c:
                patch = np.asarray(Image.fromarray(patch).resize((c, c), Image.BICUBIC,
                                                                  reducing_gap=2.0))
                mpatch = np.asarray(Image.fromarray(mpatch.astype(np.uint8) * 255)
                                    .resize((c, c), Image.BILINEAR)) >= 128
            if self.rng.random() < 0.5:
                patch, mpatch = patch[:, ::-1], mpatch[:, ::-1]
            xs.append(np.ascontiguousarray(patch))
            ms.append(np.ascontiguousarray(mpatch))
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255)
        m = torch.from_numpy(np.stack(ms)).unsqueeze(1).float()
        return x, m


def _val_tensors(samples: list[Sample], masks: list[np.ndarray], size: int = 256,
                 limit: int = 24) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Centre crops of the held-out photos (video frames only when there are no photos)."""
    pairs = list(zip(samples, masks, strict=True))
    photos = [(s, m) for s, m in pairs if not _is_video(s)]
    out = []
    for s, m in (photos or pairs)[:limit]:
        h, w = s.image.shape[:2]
        if min(h, w) < 64:
            continue
        hh, ww = min(size, h) // 64 * 64, min(size, w) // 64 * 64
        r, c = (h - hh) // 2, (w - ww) // 2
        x = torch.from_numpy(np.array(s.image[r : r + hh, c : c + ww]))
        mt = torch.from_numpy(np.array(m[r : r + hh, c : c + ww]))
        out.append((x.permute(2, 0, 1)[None].float() / 255, mt[None, None].float()))
    return out


class _Reference:
    """What a dependent layer needs from the frozen base (``models.base_reference``, the
    codec's own rule), with ŷ from the base's float training path: ŷ (fusion) or x̂_machine
    (DC)."""

    def __init__(self, base: LayerCodec | None, kind: str) -> None:
        self.base, self.kind = base, kind

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        base = self.base
        if base is None:
            return None
        y_hat = base.coder(base.g_a(x))["y_hat"]
        return base_reference(self.kind, y_hat, base.synthesize)


@dataclass
class InitRecord:
    """Where a run's starting weights came from (recorded on the model card)."""

    source: str
    model_id: str
    digest: str
    copied: int
    total: int
    steps: int  # steps already behind those weights when they continue the same model
    wall_s: float


def _init_state(path: str, device: str) -> tuple[dict[str, torch.Tensor], str, str, dict]:
    """(state dict, model id, digest, meta) of a package, or of a run checkpoint (its EMA)."""
    p = Path(path)
    if p.suffix == ".pt":
        ck = torch.load(p, map_location=device, weights_only=False)
        state = dict(ck["model"])
        if ck.get("ema"):
            state.update(ck["ema"]["shadow"])
        meta = {"steps": ck["step"], "wall_s": ck["wall"]}
        return state, ck["config"].get("model_id", ""), "", meta
    pkg = load_package(find_package(path), device)
    return pkg.model.state_dict(), pkg.config.model_id, pkg.digest, pkg.config.meta


def warm_start(model: LayerCodec, path: str, device: str = "cpu") -> InitRecord:
    """Copy every tensor of ``path`` whose name and shape fit ``model``.

    A different kind or a different latent split fits in part (an enhancement layer takes the
    trunk's g_a body and g_s); whatever does not fit keeps its fresh initialisation. An
    enhancement layer's analysis output that did not fit starts at zero, so ŷa ≈ 0 (up to
    the rounding offset around its predicted means) and g_human decodes the base's ŷ alone:
    from the base's own package that is close to the base's image (24.3 vs 25.4 dB on
    held-out photos for base-gdn-l0.013), from a trunk trained separately it is a decoder
    for another latent space (12.1 dB). Weights of the same model id (a run continued
    from its exported package) continue its step count.

    A wider model (a larger ``N``, ``lite``/``gdn`` transforms) is warm-started by
    :func:`_widen` and starts exactly where the narrower one was.
    """
    state, model_id, digest, meta = _init_state(path, device)
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape
           and own[k].dtype.is_floating_point}
    with torch.no_grad():
        for k, v in fit.items():
            own[k].copy_(v.to(own[k].dtype))
        widened = _widen(model, {k: v for k, v in state.items() if k not in fit})
        if model.kind is LayerKind.ENHANCEMENT:
            last = [m for m in model.g_a.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            names = {id(p): n for n, p in model.named_parameters()}
            if names[id(last.weight)] not in fit:
                last.weight.zero_()
                last.bias.zero_()
    same = model_id == model.config.model_id
    params = {n for n, _ in model.named_parameters()}
    return InitRecord(source=str(path), model_id=model_id, digest=digest,
                      copied=len(params & (set(fit) | widened)), total=len(params),
                      steps=int(meta.get("steps", 0)) if same else 0,
                      wall_s=float(meta.get("wall_s", 0.0)) if same else 0.0)


def _widen(model: LayerCodec, state: dict[str, torch.Tensor]) -> set[str]:
    """Net2Net-style widening of the transforms (g_a, g_s of convolutions and GDN) from a
    narrower model's tensors: each old tensor fills the leading block of the wider one; the
    new channels keep their fresh weights, and every convolution's weights *from* a new
    channel start at zero, so the old channels, and the image, are computed exactly as before
    while the new ones get gradients from the first step. (A fresh GDN's cross terms are
    already zero. ``SubpixelUp``'s pixel shuffle takes the leading 4·C channels to the leading
    C, so leading blocks stay leading.) Returns the names of the widened tensors; tensors of
    other layers (attention, norms) are left fresh, as before."""
    from compressai.layers import GDN

    widened: set[str] = set()
    for prefix in ("g_a", "g_s"):
        for name, module in getattr(model, prefix).named_modules():
            if not isinstance(module, torch.nn.Conv2d | GDN):
                continue
            for pname, param in module.named_parameters(recurse=False):
                key = f"{prefix}.{name}.{pname}"
                old = state.get(key)
                if old is None or old.dim() != param.dim() or any(
                        o > n for o, n in zip(old.shape, param.shape, strict=True)):
                    continue
                param[tuple(slice(0, o) for o in old.shape)] = old.to(param.dtype)
                if isinstance(module, torch.nn.Conv2d) and pname == "weight":
                    param[:, old.shape[1]:] = 0
                widened.add(key)
    return widened


def _build(cfg: TrainConfig) -> tuple[LayerCodec, LayerCodec | None]:
    base = None
    digest = ""
    if LayerKind.parse(cfg.kind).needs_parent:
        if not cfg.base:
            raise ValueError(f"training a {cfg.kind} model needs --base PACKAGE")
        pkg = load_package(find_package(cfg.base), cfg.device)
        base, digest = pkg.model.eval(), pkg.digest
        for p in base.parameters():
            p.requires_grad_(False)
    config = CodecConfig(kind=cfg.kind, arch=cfg.arch, N=cfg.N, m=cfg.m,
                         spatial_context=cfg.spatial_context,
                         model_id=cfg.resolved_model_id(), base_digest=digest)
    return create_model(config).to(cfg.device), base


@torch.no_grad()
def _validate(model: LayerCodec, ref: _Reference, val: list, lmbda: float, device: str
              ) -> dict[str, float]:
    model.eval()
    bpps, z_bpps, mses, masked = [], [], [], []
    for x, m in val:
        x, m = x.to(device), m.to(device)
        out = model(x, ref(x))
        t = rate_distortion_loss(out, x, lmbda)
        bpps.append(float(t["bpp"]))
        z_bpps.append(float(t["bpp_z"]))
        err = (out["x_hat"].clamp(0, 1) - x).pow(2)
        mses.append(float(err.mean()))
        denom = float(m.sum()) * 3
        if denom > 0:
            masked.append(float((err * m).sum()) / denom)
    model.train()
    if not bpps:
        return {}
    # z's share of the rate: near 0 when the hyperprior has collapsed (docs/training.md)
    return {"val_bpp": float(np.mean(bpps)), "val_psnr": float(np.mean([psnr(v) for v in mses])),
            "val_psnr_mask": float(np.mean([psnr(v) for v in masked])) if masked else math.nan,
            "val_z_share": float(np.sum(z_bpps) / max(np.sum(bpps), 1e-12))}


_LOG_FIELDS = ("step", "loss", "bpp", "mse", "psnr", "lr", "aux", "val_bpp", "val_psnr",
               "val_psnr_mask", "val_z_share")


def _log_fields(path: Path) -> tuple[str, ...]:
    """The columns of ``metrics.csv``: a resumed run keeps the header its file began with (a
    run started by an older version goes on without the columns added since)."""
    if path.is_file():
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header and header[-1] == "wall_s":
            return tuple(header[:-1])
    return _LOG_FIELDS


def train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Train (or resume) and export ``<out>/model.icmpkg``; returns its path.

    Resumes from ``<out>/last.pt`` when it exists (model, optimizers, EMA, schedule, data
    RNG); otherwise starts from ``cfg.init`` (if given) or from fresh weights. SIGINT and
    SIGTERM stop it like Ctrl-C: a checkpoint and an export of what was learned.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out), stop_signals_interrupt():
        return _train(cfg, out, progress)


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` for the whole run: two trainers on one run directory would
    overwrite each other's checkpoints."""
    f = (out / ".lock").open("a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ValueError(f"run directory {out} is in use by another training process") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def run_in_use(out: Path) -> bool:
    """Whether a training process holds ``out``'s lock."""
    path = out / ".lock"
    if not path.is_file():
        return False
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _train(cfg: TrainConfig, out: Path, progress: bool) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not 0.0 <= cfg.outside_weight <= 1.0:
        raise ValueError(f"--outside-weight must lie in [0, 1], got {cfg.outside_weight}")
    torch.manual_seed(cfg.seed)
    model, base = _build(cfg)
    model.coder.z_noise = cfg.z_noise
    if cfg.freeze_transforms:  # only the latent coder learns: ŷ's decoder stays as it was
        for p in [*model.g_a.parameters(), *model.g_s.parameters()]:
            p.requires_grad_(False)
    ref = _Reference(base, cfg.kind)
    opt, aux_opt = make_optimizers(model, cfg.lr, density_lr_scale=cfg.density_lr_scale)
    ckpt_path = out / "last.pt"
    step, wall = 0, 0.0
    rng_state = ema_state = None
    init: InitRecord | None = None
    schedule = LRSchedule(cfg.lr, cfg.warmup, cfg.steps, cfg.decay, cfg.final_lr_ratio)
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=cfg.device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        aux_opt.load_state_dict(ck["aux_opt"])
        step, wall, rng_state = ck["step"], ck["wall"], ck["rng"]
        schedule = LRSchedule.from_dict(ck["schedule"]).extended(cfg.steps, step)
        init = InitRecord(**ck["init"]) if ck.get("init") else None
        ema_state = ck.get("ema")
        print(f"resuming {ckpt_path} at step {step}")
    elif cfg.init:
        init = warm_start(model, cfg.init, cfg.device)
        step, wall = init.steps, init.wall_s
        print(f"initialised from {cfg.init}: {init.copied} of {init.total} parameter tensors"
              + (f", continuing at step {step}" if step else ""))
    ema = WeightEMA(model, cfg.ema)
    if ema_state:
        ema.load_state_dict(ema_state)
    train_s, val_s = load_dataset(cfg.data, max_side=cfg.max_side,
                                  video_stride=cfg.video_stride, annotations=cfg.annotations,
                                  progress=progress)
    maker = MaskMaker(cfg.mask_kind(), out.parent / ".mask-cache", alpha=cfg.alpha,
                      band=cfg.band, sam_checkpoint=cfg.sam_checkpoint,
                      seg_weights=cfg.seg_weights, device=cfg.device)
    if cfg.device != "cpu":  # a GPU machine's cores make the masks while nothing else runs
        maker.fill(train_s + val_s, workers=min(16, os.cpu_count() or 1))
    masks = [maker(s) for s in tqdm(train_s + val_s, desc=f"{maker.kind} masks",
                                    disable=not progress)]
    batches = _Batches(train_s, masks[: len(train_s)], cfg.crop, cfg.seed + step,
                       video_share=cfg.video_share, min_scale=cfg.min_scale)
    if rng_state is not None:
        batches.rng.bit_generator.state = rng_state
    val = _val_tensors(val_s, masks[len(train_s):])
    use_mask = cfg.kind == "base" and cfg.mask_kind() != "full"

    log_path = out / "metrics.csv"
    fields = _log_fields(log_path)
    new_log = not log_path.is_file()
    log_f = log_path.open("a", newline="")
    log = csv.writer(log_f)
    if new_log:
        log.writerow([*fields, "wall_s"])

    def checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "aux_opt": aux_opt.state_dict(), "ema": ema.state_dict(), "step": step,
                    "wall": wall, "rng": batches.rng.bit_generator.state,
                    "schedule": schedule.to_dict(),
                    "init": dataclasses.asdict(init) if init else None,
                    "config": dataclasses.asdict(cfg)}, tmp)
        tmp.replace(ckpt_path)

    def export_now() -> Path:
        crops = batches.fork(cfg.seed + 7919 * step)
        with ema.applied(model):
            zs = hyper_latents(model, ref, crops, cfg.batch, cfg.device)
            return export(model, cfg, out / "model.icmpkg", step=step, wall=wall,
                          n_train=len(train_s), schedule=schedule, init=init, zs=zs)

    def validated() -> tuple[dict, float | None]:
        """The weight average's validation row, and the guard's objective when it has one."""
        with ema.applied(model):
            row = _validate(model, ref, val, cfg.lmbda, cfg.device)
        return row, (validation_objective(row, cfg.lmbda, use_mask)
                     if row.get("val_bpp") is not None else None)

    guard = DivergenceGuard({"model": model, "opt": opt, "aux_opt": aux_opt, "ema": ema},
                            cfg.divergence_tolerance)
    if guard.tolerance and step < cfg.steps:
        # the state a run starts from (warm start or checkpoint) is the first one to go back
        # to: a resumed run that blew up before its first validation had nothing to restore
        _, start = validated()
        if start is not None:
            guard.check(start, step)
    model.train()
    last_ckpt = last_export = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.kind} λ={cfg.lmbda:g}",
               disable=not progress, dynamic_ncols=True)
    try:
        while step < cfg.steps:
            t0 = time.monotonic()
            lr = schedule(step)
            set_lr(opt, lr)
            x, m = batches.next(cfg.batch)
            x, m = x.to(cfg.device), m.to(cfg.device)
            terms = train_step(model, opt, aux_opt, x, cfg.lmbda, reference=ref(x),
                               mask=loss_weights(m, cfg.outside_weight) if use_mask else None,
                               clip=cfg.clip,
                               z_weight=z_rate_weight(step, cfg.z_rate_ramp))
            ema.update(model)
            step += 1
            wall += time.monotonic() - t0
            p = psnr(float(terms["mse_full"]))
            row = {"step": step, "loss": float(terms["loss"]), "bpp": float(terms["bpp"]),
                   "mse": float(terms["mse"]), "psnr": p, "lr": lr, "aux": float(terms["aux"])}
            if step % cfg.val_every == 0 or step == cfg.steps:
                val_row, objective = validated()
                row |= val_row
                if objective is not None and guard.check(objective, step):
                    back = guard.restore()
                    schedule = dataclasses.replace(schedule, peak=schedule.peak / 2)
                    bar.write(f"step {step}: diverged (validation objective {objective:.4g}, "
                              f"best {guard.best:.4g}): back to the weights of step {back}, "
                              f"peak learning rate halved to {schedule.peak:.3g}")
                bar.write(f"step {step}: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in row.items() if k.startswith("val")))
            if step % 10 == 0 or "val_bpp" in row:
                log.writerow([row.get(k, "") for k in fields] + [f"{wall:.1f}"])
                log_f.flush()
            bar.set_postfix(loss=f"{row['loss']:.3g}", bpp=f"{row['bpp']:.3f}", psnr=f"{p:.2f}")
            bar.update(1)
            if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                checkpoint()
                last_ckpt = time.monotonic()
            if time.monotonic() - last_export > cfg.export_minutes * 60:
                export_now()
                last_export = time.monotonic()
    except KeyboardInterrupt:  # Ctrl-C or the plan runner's deadline: keep what was learned
        bar.write(f"interrupted at step {step}: checkpoint and export")
    finally:
        bar.close()
        checkpoint()
        log_f.close()
    return export_now()


@torch.no_grad()
def hyper_latents(model: LayerCodec, ref: _Reference, crops: _Batches, batch: int, device: str,
                  n: int = 64) -> list[torch.Tensor]:
    """z = h_a(g_a(x)) of ``n`` batches of training crops (CPU tensors), for the density fit."""
    was = model.training
    model.eval()
    zs = []
    for _ in range(n):
        x, _ = crops.next(batch)
        x = x.to(device)
        y = model.g_a(model.analysis_input(x, ref(x)))
        zs.append(model.coder.h_a(y).cpu())
    model.train(was)
    return zs


def export(model: LayerCodec, cfg: TrainConfig, path: Path, *, step: int, wall: float,
           n_train: int, schedule: LRSchedule | None = None, init: InitRecord | None = None,
           zs: list[torch.Tensor] | None = None) -> Path:
    """Freeze a copy (integer weights, CDF tables) and write the package with its record;
    with ``zs`` the copy's z density is first fitted to them (see ``refit_density``)."""
    model = copy.deepcopy(model).to("cpu").eval()
    z_bits = refit_density(model, zs) if zs else None
    model.config.meta = {
        "trained": True, "lambda": cfg.lmbda, "mask": cfg.mask_kind(), "alpha": cfg.alpha,
        "data": cfg.data, "train_images": n_train, "steps": step, "wall_s": round(wall),
        "device": cfg.device, "batch": cfg.batch, "crop": cfg.crop,
        "torch": torch.__version__, "ema": cfg.ema,
        "schedule": schedule.to_dict() if schedule else None,
        "init": {"model_id": init.model_id, "digest": init.digest[:16], "steps": init.steps}
        if init else None,
        "z_bits_per_symbol": {"trained": round(z_bits[0], 3), "refitted": round(z_bits[1], 3)}
        if z_bits else None,
        **cfg.extra,
    }
    model.freeze()
    save_package(model, path)
    print(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path
