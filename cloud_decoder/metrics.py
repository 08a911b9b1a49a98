"""The cloud's Prometheus metrics (``_total`` counters, seconds, bytes).

Label values are bounded: ``camera`` by the fleet, ``reason`` of rejected frames by
:data:`~cloud_decoder.decoders.REJECT_REASONS`, the others by fixed sets in the code. Next to
them: per-RPC metrics (``grpc_server_*``, :mod:`icm_rpc.grpc_metrics`), process and build
metrics (:func:`icm_rpc.metrics.add_runtime_metrics`), the limits the instance runs under, and
the edges' own counters, re-exported from their streams (:mod:`cloud_decoder.edge_stats`).
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from icm_rpc.grpc_metrics import GrpcServerMetrics
from icm_rpc.metrics import add_runtime_metrics, latency_buckets

__all__ = ["CloudMetrics"]


class CloudMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        b = latency_buckets()
        self.received = Counter("icm_cloud_frames_received", "Base frames received",
                                ["camera"], registry=r)
        self.stored = Counter("icm_cloud_frames_stored", "Base frames durably stored",
                              ["camera"], registry=r)
        self.duplicates = Counter("icm_cloud_frames_duplicate", "Re-sent frames already "
                                  "stored (acked, not stored again)", registry=r)
        self.rejected = Counter("icm_cloud_frames_rejected", "Frames rejected (corrupt layer, "
                                "unknown model)", ["camera", "reason"], registry=r)
        self.base_bytes = Counter("icm_cloud_base_bytes", "Bytes of base layers received",
                                  ["camera"], registry=r)
        self.decode_seconds = Histogram("icm_cloud_decode_seconds", "Base-layer decode time per "
                                        "batch", buckets=b, registry=r)
        self.analytics_seconds = Histogram("icm_cloud_analytics_seconds", "Detector time per "
                                           "batch", ["model"], buckets=b, registry=r)
        self.commit_seconds = Histogram("icm_cloud_commit_seconds", "Time to store a batch's "
                                        "frames durably (one transaction; waits for a database "
                                        "that is away not counted)", buckets=b, registry=r)
        self.frames_analysed = Counter("icm_cloud_frames_analysed", "Frames analysed per "
                                       "detector, by the weights that ran (stock, or adapted to "
                                       "the frame's base model)", ["model", "weights"],
                                       registry=r)
        self.batch_frames = Histogram("icm_cloud_batch_frames", "Frames per processing batch",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.capture_to_stored = Histogram("icm_cloud_capture_to_stored_seconds", "From capture "
                                           "at the edge to durable storage in the cloud",
                                           buckets=b, registry=r)
        self.detections = Counter("icm_cloud_detections", "Detections on machine images",
                                  ["class_name"], registry=r)
        self.enhancement_requests = Counter("icm_cloud_enhancement_requests", "Human-view "
                                            "requests", ["outcome"], registry=r)
        self.enhancement_seconds = Histogram("icm_cloud_enhancement_seconds", "Human-view "
                                             "latency (edge round trip + human-image decode)",
                                             buckets=b, registry=r)
        self.active_sessions = Gauge("icm_cloud_active_sessions", "Edge streams connected",
                                     registry=r)
        self.queue_frames = Gauge("icm_cloud_queue_frames", "Frames waiting for decode",
                                  registry=r)
        self.database_up = Gauge("icm_cloud_database_up", "1 while the database answers "
                                 "(ingest pauses while it is 0)", registry=r)
        self.database_errors = Counter("icm_cloud_database_errors", "Database operations that "
                                       "failed because the database was unavailable",
                                       registry=r)
        self.protocol_errors = Counter("icm_cloud_protocol_errors", "Edge streams ended or "
                                       "messages dropped for breaking the EdgeLink protocol",
                                       ["reason"], registry=r)
        self.silent_streams = Counter("icm_cloud_silent_streams", "Edge streams closed after "
                                      "the edge went silent (missed heartbeats)", registry=r)
        self.retention_deleted = Counter("icm_cloud_retention_deleted", "Rows deleted by the "
                                         "retention bounds", ["kind"], registry=r)
        self.errors = Counter("icm_cloud_rpc_errors", "RPCs that ended with an error status",
                              ["method", "code"], registry=r)
        # -- operations: per camera, limits next to usage, load, the database (issue 15) -----
        self.camera_connected = Gauge(
            "icm_cloud_camera_connected", "1 while this instance holds the camera's stream; 0 "
            "for a camera offline everywhere (every instance reports those: take max by camera)",
            ["camera"], registry=r)
        self.camera_last_frame = Gauge(
            "icm_cloud_camera_last_frame_timestamp_seconds", "Capture time (Unix seconds) of "
            "the camera's newest stored frame, from the instance that holds (or last held) its "
            "stream",
            ["camera"], registry=r)
        self.cameras = Gauge("icm_cloud_cameras", "Cameras in the database, by state (online, "
                             "offline)", ["state"], registry=r)
        self.max_streams = Gauge("icm_cloud_max_streams", "Edge streams this instance can hold "
                                 "(RPC workers less those kept for analysts and peers)",
                                 registry=r)
        self.queue_capacity = Gauge("icm_cloud_queue_capacity_frames", "Frames the ingest "
                                    "queue holds before streams feel back-pressure", registry=r)
        self.ingest_busy = Counter("icm_cloud_ingest_busy_seconds", "Time the ingest worker "
                                   "spent on batches (decode, analytics, commit); its rate is "
                                   "the worker's utilisation (1: saturated), the autoscaler's "
                                   "load metric", registry=r)
        self.database_size = Gauge("icm_cloud_database_size_bytes", "Size of the database "
                                   "(SQLite file, or PostgreSQL's pg_database_size)",
                                   registry=r)
        self.frame_retention = Gauge("icm_cloud_frame_retention_seconds", "Frames older than "
                                     "this are deleted (0: kept for ever)", registry=r)
        self.camera_frames_max = Gauge("icm_cloud_camera_frames_max_bytes", "Base-layer bytes "
                                       "kept per camera (0: unbounded)", registry=r)
        self.human_view_retention = Gauge("icm_cloud_human_view_retention_seconds", "Cached "
                                          "human views of older frames are dropped (0: kept)",
                                          registry=r)
        self.camera_human_views_max = Gauge("icm_cloud_camera_human_views_max_bytes", "Cached "
                                            "human-view bytes kept per camera (0: unbounded)",
                                            registry=r)
        self.grpc = GrpcServerMetrics(r)
        add_runtime_metrics(r, "cloud")

    def forget_camera(self, camera: str) -> None:
        """Drop the camera's state gauges here (another instance holds its stream now)."""
        for g in (self.camera_connected, self.camera_last_frame):
            with contextlib.suppress(KeyError):
                g.remove(camera)
