"""What a training run is: :class:`TrainConfig`, and so the flags of ``icm train``.

Each field declares its flag and help text (``icm_codec.configflags``); ``icm train``'s command
line is generated from it (no environment variables: a run is its command line, and the run
directory records it). Kept apart from ``trainer.py`` so that ``icm train --help`` needs no
torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ARCHS
from ..configflags import flag, not_a_flag

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    kind: str = not_a_flag(  # base | enhancement | residual | single
        why="the positional KIND (dc: residual)")
    data: list[str] = flag(nargs="+", help="image folders, image files and/or video files")
    lmbda: float = flag(flags=["--lambda"],
                        help="rate-distortion trade-off (e.g. 0.0018 ... 0.0483)")
    out: str = not_a_flag("runs/model", why="its default follows KIND and λ", via=["--out"])
    mask: str = flag("", choices=["edges", "objects", "full"],  # "": edges for base, else full
                     help="loss mask (default: edges for base, full otherwise)")
    alpha: float = flag(0.93, help="edge-mask confidence knob (lower: more segments, more edges)")
    band: int = flag(3, help="edge-mask band: boundaries dilated by this many pixels")
    outside_weight: float = flag(0.0,  # issue 10: against colour drift / smeared interiors
                                 help="base: weight of the pixels outside the loss mask in the "
                                      "distortion (0: the mask alone, as SA-ICM; 1: plain MSE)")
    sam_checkpoint: str | None = flag(None, help="Segment Anything checkpoint for edge masks")
    seg_weights: str | None = flag(None,
                                   help="instance-segmentation weights for object masks")
    annotations: str | None = flag(None, help="COCO JSON with polygons for object masks")
    base: str | None = flag(None,  # package of the frozen base (enhancement / residual)
                            help="frozen base package (enhancement and dc)")
    arch: str = flag("lite", choices=list(ARCHS), help="transform architecture")
    N: int = flag(128, help="transform width")
    m: int = flag(4, help="enhancement slices")
    model_id: str = flag("", help="default: KIND-ARCH-lLAMBDA")
    init: str | None = flag(None,  # package or checkpoint whose fitting weights start the run
                            help="package (path, model id or digest) or run checkpoint (last.pt) "
                                 "whose fitting weights start the run (warm start)")
    steps: int = flag(20000, help="training steps (a resumed run continues to this many)")
    batch: int = flag(2, help="crops per step")
    crop: int = flag(256, help="crop size in pixels")
    lr: float = flag(3e-4, help="peak learning rate")  # peak of the schedule
    warmup: int = flag(500, help="warm-up steps")
    # cosine decay over the last `decay` steps (step-based, in the checkpoint)
    decay: int = flag(4000, help="cosine decay over the last DECAY steps")
    final_lr_ratio: float = flag(0.02, help="learning rate at the end, as a share of the peak")
    density_lr_scale: float = flag(1.0,  # = training.DENSITY_LR_SCALE (tests check)
                                   help="learning rate of the z density, times the main rate")
    z_noise: bool = flag(False,  # the hyperprior's dead zone: docs/training.md
                         help="the hyper decoder sees z + uniform noise in training, not round(z)")
    spatial_context: bool = flag(False,  # checkerboard: docs/training.md
                                 help="code each latent slice in two checkerboard passes, the "
                                      "second conditioned on the first (a warm start from a "
                                      "package without it starts exactly where it was)")
    freeze_transforms: bool = flag(False,  # e.g. a new entropy model on a shipped trunk
                                   help="train the latent coder only (hyperprior, contexts); "
                                        "the analysis and synthesis transforms keep the "
                                        "weights they start from (--init)")
    z_rate_ramp: int = flag(0,  # against the hyperprior's collapse; it does not revive a
                            # collapsed one (measured, docs/training.md)
                            help="z's rate counts in the loss with a weight rising linearly "
                                 "from 0 to 1 over the run's first Z_RATE_RAMP steps")
    ema: float = flag(0.999,  # validation and export use the moving average of the weights
                      help="weight-average decay (validation and export use the average)")
    clip: float = flag(1.0, help="gradient-norm clip")
    divergence_tolerance: float = flag(0.2,  # icm_codec/train/guard.py: why
                                       help="a validation objective this share above the "
                                            "best so far is a divergence: the last healthy "
                                            "weights come back and the peak rate halves (0: "
                                            "off)")
    device: str = flag("cpu", help="cpu or cuda")
    seed: int = flag(0, help="random seed (weights and crops)")
    checkpoint_minutes: float = flag(5.0, help="write last.pt at least this often")
    export_minutes: float = flag(30.0,  # a fresh model.icmpkg at least this often
                                 help="refresh model.icmpkg at least this often")
    val_every: int = flag(500, help="validate every this many steps")
    max_side: int = flag(1024, help="images are downscaled to at most this many pixels a side")
    video_stride: int = flag(5, help="train on every this-many-th video frame")
    video_share: float = flag(0.15,  # at most this share of crops from video frames
                              help="largest share of crops taken from video frames")
    min_scale: float = flag(0.5,  # crops are downscaled by a random factor in [min_scale, 1]
                            help="crops are downscaled by a random factor in [MIN_SCALE, 1]")
    threads: int = flag(0, help="torch CPU threads (0: default)")
    extra: dict = not_a_flag(default_factory=dict,  # e.g. the plan entry, recorded on the card
                             why="recorded on the model card (--plan-job)")

    def mask_kind(self) -> str:
        return self.mask or ("edges" if self.kind == "base" else "full")

    def resolved_model_id(self) -> str:
        return self.model_id or f"{self.kind}-{self.arch}-l{self.lmbda:g}"
