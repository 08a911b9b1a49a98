"""What a cloud decoder runs with: :class:`CloudConfig`, and so the flags of ``icm cloud``.

Each field declares its flag, help text and environment variable (``icm_codec.configflags``);
the command line is generated from it. Kept apart from ``server.py`` so that ``icm cloud
--help`` needs no import of the service and its torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from icm_codec.configflags import flag, not_a_flag
from icm_rpc.cli_common import name_list
from icm_rpc.tls import TLSFiles

if TYPE_CHECKING:
    from .storage import RetentionPolicy

__all__ = ["DB", "ENV_PREFIX", "CloudConfig"]

ENV_PREFIX = "ICM_CLOUD_"  # the variable of a flag that names none of its own
DB = "cloud-data/cloud.sqlite3"   # SQLite path / sqlite:/// URL, or postgresql://...

_RETENTION = "retention per camera (0: unbounded; oldest first)"
_OPERATIONS = "operations (docs/operations.md)"


@dataclass
class CloudConfig:
    listen: str = flag("127.0.0.1:50051", env="ICM_LISTEN",
                       help="address for edges (and analysts); a non-loopback address needs "
                            "TLS (or --insecure)")
    analyst_listen: str = flag("", env="ICM_ANALYST_LISTEN",  # TLS without client certs
                               help="separate analyst address (TLS without client certificates)")
    db: str = flag(DB, env="ICM_CLOUD_DB",
                   help="SQLite path or sqlite:/// URL, or postgresql://...")
    decoder: str = flag("codec", choices=["codec", "noop"],
                        help="noop: check containers only (service-overhead benchmark)")
    device: str = flag("cpu", env="ICM_DEVICE", help="cpu or cuda")
    detectors: list[str] = flag(default_factory=lambda: ["yolo11n"], env="ICM_DETECTORS",
                                type=name_list, show=",".join,
                                help="comma-separated detector names or .pt paths, or 'none'")
    weights_dir: str | None = flag(None, env="ICM_DETECTOR_DIR",
                                   help="folder with <name>.pt detector weights")
    detector_conf: float = flag(0.25, flags=["--conf"], help="detection score threshold")
    analyst_token: str = not_a_flag(  # empty: the analyst API is open (local use only)
        "", why="a secret: read from $ICM_ANALYST_TOKEN only, never a command line")
    tls: TLSFiles = not_a_flag(default_factory=TLSFiles, why="three PEM files",
                               via=["--tls-ca", "--tls-cert", "--tls-key"])
    mtls: bool = flag(True, flags=["--no-mtls"],  # with TLS: edges present a client certificate
                      help="with TLS: do not require edge client certificates")
    metrics_port: int | None = not_a_flag(None, why="-1 on the command line is None here",
                                          via=["--metrics-port"])
    max_batch: int = flag(32, help="frames per decode batch")
    enhancement_timeout_s: float = flag(
        30.0, help="longest wait for a camera's enhancement layer (a human view)")
    instance: str = flag("", env="ICM_INSTANCE",
                         help="this instance's name (default host:port)")
    # The address other instances use to reach this one's Analyst API (default
    # "<hostname>:<analyst port>"); recorded as this instance's name next to each camera it
    # holds, so that peers can forward human-view requests here (cloud_decoder/forwarding.py).
    advertise: str = flag("", env="ICM_ADVERTISE",
                          help="analyst address other cloud instances use to reach this one "
                               "(several instances on one PostgreSQL database)")
    max_workers: int = flag(128, env="ICM_MAX_WORKERS", group=_OPERATIONS,
                            help="RPC worker threads: each edge stream holds one, 4 are kept "
                                 "back (default 128)")
    threads: int = not_a_flag(0, why="a flag the services share", via=["--threads"])
    thumbnail_width: int = flag(256, env="ICM_THUMBNAIL_WIDTH",
                                help="keep a JPEG thumbnail this wide with each frame, for the "
                                     "web console (about 7 KB at 256; 0: none, made when first "
                                     "asked)")
    insecure: bool = flag(False, env="ICM_INSECURE",
                          help="allow plaintext edge streams and an analyst API without a token "
                               "on non-loopback addresses (refused otherwise)")
    heartbeat_s: float = flag(2.0, help="edges send a heartbeat this often when idle; a stream "
                                        "silent for 5 intervals is closed (default 2)")
    hello_timeout_s: float = flag(10.0, help="end a stream that sends no Hello within this long")
    db_check_s: float = flag(2.0, help="database probe interval (health, ingest pause)")
    frame_retention_s: float = flag(0.0, env="ICM_FRAME_RETENTION_S", group=_RETENTION,
                                    help="delete frames captured longer ago")
    max_camera_frames_mb: float = flag(0.0, env="ICM_MAX_CAMERA_FRAMES_MB", group=_RETENTION,
                                       help="base-layer megabytes kept per camera")
    human_view_retention_s: float = flag(
        0.0, env="ICM_HUMAN_VIEW_RETENTION_S", group=_RETENTION,
        help="drop cached human views of frames captured longer ago")
    max_camera_human_views_mb: float = flag(0.0, env="ICM_MAX_CAMERA_HUMAN_VIEWS_MB",
                                            group=_RETENTION,
                                            help="cached human-view megabytes kept per camera")
    retention_interval_s: float = flag(60.0, group=_RETENTION,
                                       help="apply the bounds this often")
    max_connection_age_s: float = flag(0.0, env="ICM_MAX_CONNECTION_AGE_S", group=_OPERATIONS,
                                       help="end each connection after about this long (0: "
                                            "never), so edge streams rebalance over instances "
                                            "added since")
    max_connection_age_grace_s: float = flag(
        30.0, group=_OPERATIONS,
        help="then give its calls this long to finish before closing it")
    edge_stats_s: float = flag(10.0, env="ICM_EDGE_STATS_S", group=_OPERATIONS,
                               help="edges send their counters this often, re-exported on "
                                    "/metrics (0: never)")
    presence_interval_s: float = flag(30.0, group=_OPERATIONS,
                                      help="refresh the per-camera state gauges from the "
                                           "database this often")
    # Detectors adapted to machine images (analytics.adapted): folders searched before
    # $ICM_ADAPTED_PATH and the shipped ones; use_adapted=False serves the stock weights only.
    adapted_dirs: list[str] = flag(
        default_factory=list, flags=["--adapted"], append=True, metavar="DIR", env="",
        help="folder of adapted detectors (icm adapt-detector), searched before "
             "$ICM_ADAPTED_PATH and the shipped ones; frames of a base model with one are "
             "analysed by it (repeatable)")
    use_adapted: bool = flag(True, flags=["--no-adapted"],
                             help="serve the stock detector weights for every frame")

    @property
    def retention(self) -> RetentionPolicy:
        from .storage import RetentionPolicy

        return RetentionPolicy(self.frame_retention_s, int(self.max_camera_frames_mb * 2**20),
                               self.human_view_retention_s,
                               int(self.max_camera_human_views_mb * 2**20))
