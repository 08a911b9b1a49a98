"""The cloud's Prometheus metrics (``_total`` counters, seconds, bytes)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from icm_rpc.metrics import latency_buckets

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
                                             "latency (edge round trip + fusion decode)",
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
