"""The edge's Prometheus metrics (names follow Prometheus conventions: ``_total`` counters,
base units)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from icm_rpc.metrics import latency_buckets

__all__ = ["EdgeMetrics"]


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.captured = Counter("icm_edge_frames_captured", "Frames read from the source",
                                registry=r)
        self.encoded = Counter("icm_edge_frames_encoded", "Layers encoded", ["layer"],
                               registry=r)
        self.sent = Counter("icm_edge_frames_sent", "Base frames sent to the cloud "
                            "(re-sends included)", registry=r)
        self.acked = Counter("icm_edge_frames_acked", "Base frames acknowledged by the cloud",
                             registry=r)
        self.dropped = Counter("icm_edge_frames_dropped", "Frames lost before the cloud stored "
                               "them", ["reason"], registry=r)
        self.encode_seconds = Histogram("icm_edge_encode_seconds", "Encode latency per layer",
                                        ["layer"], buckets=latency_buckets(), registry=r)
        self.layer_bytes = Counter("icm_edge_layer_bytes", "Bytes of encoded layers",
                                   ["layer"], registry=r)
        self.spool_frames = Gauge("icm_edge_spool_frames", "Base frames waiting for an ack",
                                  registry=r)
        self.spool_bytes = Gauge("icm_edge_spool_bytes", "Bytes of base frames waiting for an "
                                 "ack", registry=r)
        self.retained_frames = Gauge("icm_edge_retained_frames", "Frames kept for enhancement "
                                     "requests", registry=r)
        self.retained_bytes = Gauge("icm_edge_retained_bytes", "Bytes kept for enhancement "
                                    "requests", registry=r)
        self.reconnects = Counter("icm_edge_reconnects", "Stream (re)connection attempts after "
                                  "the first", registry=r)
        self.connected = Gauge("icm_edge_connected", "1 while the stream to the cloud is up",
                               registry=r)
        self.source_events = Counter("icm_edge_source_events", "Live source trouble: "
                                     "open_failed, lost (stopped delivering), reopened",
                                     ["event"], registry=r)
        self.capture_stalls = Counter("icm_edge_capture_stalls", "Times no frame came from the "
                                      "source for the stall time", registry=r)
        self.capture_up = Gauge("icm_edge_capture_up", "1 while frames come from the source "
                                "(0 during a stall)", registry=r)
        self.enhancement_requests = Counter("icm_edge_enhancement_requests", "Enhancement "
                                            "requests answered", ["outcome"], registry=r)
