"""The edge's Prometheus metrics (names follow Prometheus conventions: ``_total`` counters,
base units)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from icm_rpc import pb
from icm_rpc.grpc_metrics import GrpcClientMetrics
from icm_rpc.metrics import add_runtime_metrics, latency_buckets

__all__ = ["ENHANCEMENT_OUTCOMES", "EdgeMetrics", "edge_stats"]


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
        self.cloud_instance = Gauge("icm_edge_cloud_instance", "1 for the cloud instance that "
                                    "holds the stream (Welcome.cloud_instance), while it is up",
                                    ["instance"], registry=r)
        self.source_events = Counter("icm_edge_source_events", "Live source trouble: "
                                     "open_failed, lost (stopped delivering), reopened",
                                     ["event"], registry=r)
        self.capture_stalls = Counter("icm_edge_capture_stalls", "Times no frame came from the "
                                      "source for the stall time", registry=r)
        self.capture_up = Gauge("icm_edge_capture_up", "1 while frames come from the source "
                                "(0 during a stall)", registry=r)
        self.enhancement_requests = Counter("icm_edge_enhancement_requests", "Enhancement "
                                            "requests answered", ["outcome"], registry=r)
        # limits next to usage (issue 15): spool and retention bounds of this edge
        self.spool_max_bytes = Gauge("icm_edge_spool_max_bytes", "Bound on unacked base "
                                     "frames (--max-spool-mb): past it the oldest are dropped",
                                     registry=r)
        self.retained_max_bytes = Gauge("icm_edge_retained_max_bytes", "Bound on what is kept "
                                        "for human views (--max-retained-mb)", registry=r)
        self.retention_seconds = Gauge("icm_edge_retention_seconds", "Frames are kept for "
                                       "human views this long (--retention-s)", registry=r)
        self.grpc = GrpcClientMetrics(r)
        add_runtime_metrics(r, "edge")


ENHANCEMENT_OUTCOMES = ("eager", "lazy", "not_retained", "error", "unsupported")


def edge_stats(metrics: EdgeMetrics) -> pb.EdgeStats:
    """What the edge's own /metrics says, as the EdgeStats message its stream carries to the
    cloud (cameras behind NAT cannot be scraped)."""
    v: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in metrics.registry.collect():
        for s in fam.samples:
            v[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def get(name: str, **labels: str) -> float:
        return v.get((name, tuple(sorted(labels.items()))), 0.0)

    def n(name: str, **labels: str) -> int:
        return max(0, int(get(name, **labels)))

    st = pb.EdgeStats(
        start_time_s=get("process_start_time_seconds"),
        frames_captured=n("icm_edge_frames_captured_total"),
        frames_sent=n("icm_edge_frames_sent_total"),
        frames_acked=n("icm_edge_frames_acked_total"),
        frames_dropped_spool_full=n("icm_edge_frames_dropped_total", reason="spool_full"),
        frames_rejected_by_cloud=n("icm_edge_frames_dropped_total", reason="rejected_by_cloud"),
        reconnects=n("icm_edge_reconnects_total"),
        capture_stalls=n("icm_edge_capture_stalls_total"),
        capture_up=get("icm_edge_capture_up") > 0,
        source_open_failed=n("icm_edge_source_events_total", event="open_failed"),
        source_lost=n("icm_edge_source_events_total", event="lost"),
        source_reopened=n("icm_edge_source_events_total", event="reopened"),
        spool_frames=n("icm_edge_spool_frames"), spool_bytes=n("icm_edge_spool_bytes"),
        spool_max_bytes=n("icm_edge_spool_max_bytes"),
        retained_frames=n("icm_edge_retained_frames"),
        retained_bytes=n("icm_edge_retained_bytes"),
        retained_max_bytes=n("icm_edge_retained_max_bytes"),
        retention_s=get("icm_edge_retention_seconds"))
    bounds = latency_buckets()
    for layer in ("base", "enhancement"):
        frames = n("icm_edge_frames_encoded_total", layer=layer)
        if not frames:
            continue
        st.layers.add(layer=layer, frames_encoded=frames,
                      bytes=n("icm_edge_layer_bytes_total", layer=layer),
                      bucket_bounds=bounds,
                      bucket_counts=[n("icm_edge_encode_seconds_bucket", layer=layer,
                                       le=_le(b)) for b in bounds]
                      + [n("icm_edge_encode_seconds_count", layer=layer)],
                      seconds_sum=get("icm_edge_encode_seconds_sum", layer=layer))
    for outcome in ENHANCEMENT_OUTCOMES:
        count = n("icm_edge_enhancement_requests_total", outcome=outcome)
        if count:
            st.enhancement_requests[outcome] = count
    return st


def _le(bound: float) -> str:
    """The ``le`` label prometheus_client writes for a bucket bound."""
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)
