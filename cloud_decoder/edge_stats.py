"""The edges' own counters and health, re-exported on the cloud's ``/metrics``.

Cameras sit behind NAT: Prometheus cannot scrape them. Each edge that the cloud asks
(``Welcome.stats_interval_ms``) sends an ``EdgeStats`` message up its stream that often; this
collector turns the newest one of every stream the instance holds into the same metric names
the edge's own ``/metrics`` has (``icm_edge_*``), with a ``camera`` label — the label the
scrape configs give a directly scraped edge. A camera scraped both ways therefore has the same
series twice (two jobs): alert rules and the dashboard take ``max by (camera)``.

Only known fields become samples and every label value comes from a fixed set, so a hostile
edge cannot make new series; a stream's series go when it closes
(``icm_cloud_camera_connected`` says so).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from edge_encoder.metrics import ENHANCEMENT_OUTCOMES
from icm_rpc import pb
from icm_rpc.metrics import latency_buckets

from .sessions import SessionRegistry

__all__ = ["EdgeStatsCollector", "clean_stats"]

LAYERS = ("base", "enhancement")


def clean_stats(st: pb.EdgeStats) -> pb.EdgeStats:
    """A copy with what the cloud will not re-export removed: unknown layers or outcomes, and
    histograms whose buckets are not the shared ones."""
    out = pb.EdgeStats()
    out.CopyFrom(st)
    del out.layers[:]
    bounds = list(latency_buckets())
    seen = set()
    for layer in st.layers:
        if layer.layer in LAYERS and layer.layer not in seen:
            seen.add(layer.layer)
            kept = out.layers.add()
            kept.CopyFrom(layer)
            if list(layer.bucket_bounds) != bounds or len(layer.bucket_counts) != len(bounds) + 1:
                del kept.bucket_bounds[:]
                del kept.bucket_counts[:]
    for key in list(out.enhancement_requests):
        if key not in ENHANCEMENT_OUTCOMES:
            del out.enhancement_requests[key]
    return out


class EdgeStatsCollector:
    """A prometheus_client collector over the sessions' newest ``EdgeStats``."""

    def __init__(self, sessions: SessionRegistry) -> None:
        self.sessions = sessions

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        yield from self._families([(s.camera_id, s.stats) for s in self.sessions.all()
                                   if s.stats is not None])

    def _families(self, stats: list[tuple[str, pb.EdgeStats]] | None = None) -> Iterator[Metric]:
        stats = stats or []
        cam = ["camera"]

        def counter(name: str, doc: str, field: str) -> CounterMetricFamily:
            f = CounterMetricFamily(name, doc, labels=cam)
            for c, st in stats:
                f.add_metric([c], getattr(st, field), created=st.start_time_s or None)
            return f

        def gauge(name: str, doc: str, field: str) -> GaugeMetricFamily:
            f = GaugeMetricFamily(name, doc, labels=cam)
            for c, st in stats:
                f.add_metric([c], float(getattr(st, field)))
            return f

        yield counter("icm_edge_frames_captured", "Frames read from the source",
                      "frames_captured")
        yield counter("icm_edge_frames_sent", "Base frames sent to the cloud", "frames_sent")
        yield counter("icm_edge_frames_acked", "Base frames acknowledged by the cloud",
                      "frames_acked")
        dropped = CounterMetricFamily("icm_edge_frames_dropped", "Frames lost before the "
                                      "cloud stored them", labels=["camera", "reason"])
        for c, st in stats:
            dropped.add_metric([c, "spool_full"], st.frames_dropped_spool_full)
            dropped.add_metric([c, "rejected_by_cloud"], st.frames_rejected_by_cloud)
        yield dropped
        yield counter("icm_edge_reconnects", "Stream reconnection attempts", "reconnects")
        yield counter("icm_edge_capture_stalls", "Capture stalls", "capture_stalls")
        yield gauge("icm_edge_capture_up", "1 while frames come from the source", "capture_up")
        events = CounterMetricFamily("icm_edge_source_events", "Live source trouble",
                                     labels=["camera", "event"])
        for c, st in stats:
            for event in ("open_failed", "lost", "reopened"):
                events.add_metric([c, event], getattr(st, f"source_{event}"))
        yield events
        for name, field, doc in (
                ("icm_edge_spool_frames", "spool_frames", "Base frames waiting for an ack"),
                ("icm_edge_spool_bytes", "spool_bytes", "Bytes waiting for an ack"),
                ("icm_edge_spool_max_bytes", "spool_max_bytes", "Bound on unacked bytes"),
                ("icm_edge_retained_frames", "retained_frames", "Frames kept for human views"),
                ("icm_edge_retained_bytes", "retained_bytes", "Bytes kept for human views"),
                ("icm_edge_retained_max_bytes", "retained_max_bytes", "Bound on kept bytes"),
                ("icm_edge_retention_seconds", "retention_s", "Human-view retention")):
            yield gauge(name, doc, field)
        encoded = CounterMetricFamily("icm_edge_frames_encoded", "Layers encoded",
                                      labels=["camera", "layer"])
        nbytes = CounterMetricFamily("icm_edge_layer_bytes", "Bytes of encoded layers",
                                     labels=["camera", "layer"])
        seconds = HistogramMetricFamily("icm_edge_encode_seconds", "Encode latency per layer",
                                        labels=["camera", "layer"])
        for c, st in stats:
            for layer in st.layers:
                encoded.add_metric([c, layer.layer], layer.frames_encoded)
                nbytes.add_metric([c, layer.layer], layer.bytes)
                if layer.bucket_counts:
                    les = [floatToGoString(b) for b in layer.bucket_bounds] + ["+Inf"]
                    seconds.add_metric([c, layer.layer], list(zip(
                        les, (float(n) for n in layer.bucket_counts), strict=True)),
                        layer.seconds_sum)
        yield encoded
        yield nbytes
        yield seconds
        requests = CounterMetricFamily("icm_edge_enhancement_requests", "Enhancement requests "
                                       "answered", labels=["camera", "outcome"])
        for c, st in stats:
            for outcome, n in sorted(st.enhancement_requests.items()):
                requests.add_metric([c, outcome], n)
        yield requests
