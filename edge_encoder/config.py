"""What an edge encoder runs with: :class:`EdgeConfig`, and so the flags of ``icm edge``.

Each field declares its flag, help text and environment variable (``icm_codec.configflags``);
the command line is generated from it. Kept apart from ``service.py`` so that ``icm edge
--help`` needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from icm_codec.configflags import flag, not_a_flag
from icm_rpc.tls import TLSFiles

__all__ = ["ENV_PREFIX", "EdgeConfig"]

ENV_PREFIX = "ICM_EDGE_"  # the variable of a flag that names none of its own


def _enhancement(text: str) -> str:
    """``--enhancement none``: no enhancement layers (the empty model name)."""
    return "" if text == "none" else text


@dataclass
class EdgeConfig:
    camera_id: str = flag(help="this camera's id (must match its client certificate)",
                          env="ICM_CAMERA_ID")
    cloud: str = flag("localhost:50051", help="cloud decoder address host:port", env="ICM_CLOUD")
    source: str = flag("", help="video file, image folder, camera index or rtsp:// URL",
                       env="ICM_SOURCE")
    max_fps: float = flag(0.0, flags=["--fps"], help="frame-rate limit (0: none)")
    loop: bool = flag(False, help="replay a file or folder forever")
    frames: int = flag(0, help="stop after N frames (0: no limit)")
    spool_dir: Path = flag(Path("edge-spool"), env="ICM_SPOOL_DIR",
                           help="durable spool of unacked frames and retained layers")
    base_model: str | None = flag(None, flags=["--model"],
                                  help="base model package (path, id or digest; default shipped)")
    enhancement_model: str | None = flag(  # None: shipped default; "": no enhancement layers
        None, flags=["--enhancement"], type=_enhancement,
        help="enhancement layer package: fusion (enhancement) or DC (residual) on the base "
             "(default shipped; 'none' for no enhancement layers)")
    enhancement_mode: str = flag(
        "lazy", choices=["lazy", "eager"],
        help="lazy: keep the raw frame, encode when asked; eager: encode at capture")
    refine_steps: int = flag(
        0, help="spend N gradient steps per enhancement layer on a better latent: fewer bits "
                "at equal quality, about N decodes of edge CPU per layer (0: off; raise the "
                "cloud's --enhancement-timeout-s to match)")
    retention_s: float = flag(3600.0, help="keep frames for enhancement requests this long "
                                           "(default 3600)")
    max_retained_mb: float = flag(1024.0, help="bound on retained raw frames and enhancement "
                                               "layers; the oldest go first")
    max_spool_mb: float = flag(256.0, help="bound on unacked base frames; the oldest are "
                                           "dropped (and counted)")
    window: int = flag(64, help="base frames in flight to the cloud before waiting for acks")
    tls: TLSFiles = not_a_flag(default_factory=TLSFiles, why="three PEM files",
                               via=["--tls-ca", "--tls-cert", "--tls-key"])
    server_name: str = flag("", env="ICM_TLS_SERVER_NAME",
                            help="TLS name to expect from the cloud")
    metrics_port: int | None = not_a_flag(None, why="-1 on the command line is None here",
                                          via=["--metrics-port"])
    health_listen: str = flag("", env="ICM_HEALTH_LISTEN",  # gRPC health server address
                              help="serve gRPC health checks here, e.g. 0.0.0.0:50052")
    threads: int = not_a_flag(0, why="a flag the services share", via=["--threads"])
    stall_s: float = flag(10.0, env="ICM_STALL_S",
                          help="no frame from the source for this long: capture stalled "
                               "(health NOT_SERVING, a log line, a metric)")
    max_backoff_s: float = flag(30.0, env="ICM_MAX_BACKOFF_S",
                                help="longest wait between reconnects to the cloud")

    def __post_init__(self) -> None:
        if not self.camera_id or len(self.camera_id) > 128:
            raise ValueError("camera id must be 1-128 characters")
        self.spool_dir = Path(self.spool_dir)
        if self.refine_steps < 0:
            raise ValueError(f"--refine-steps must be >= 0, got {self.refine_steps}")
