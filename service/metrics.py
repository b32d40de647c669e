"""Prometheus metrics of the gateway (served at /metrics). Dashboards: deploy/grafana/.

With several worker processes (`pulse-fm serve --workers N`, service/workers.py) every process
writes its values to files under PROMETHEUS_MULTIPROC_DIR and /metrics, in whichever worker
answers, aggregates them all: counters and histograms are summed, each gauge as its
`multiprocess_mode` says (in-flight amounts summed over live workers, flags the worst worker's).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

# seconds; fine at the low end for cache hits and validation
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

STAGE_SECONDS = Histogram(
    "pulsefm_stage_seconds",
    "Time per request stage: validation, cache, queue_wait, inference, probes, total",
    ["stage", "endpoint"],
    buckets=BUCKETS,
)
REQUESTS = Counter(
    "pulsefm_requests_total",
    'Answers by route template (unmatched paths: "unmatched") and status code, every status',
    ["endpoint", "status"],
)
SEGMENTS = Counter(
    "pulsefm_segments_total", "Windows received (a recording gives one or more)", ["endpoint", "modality"]
)
WINDOWS_REJECTED = Counter(
    "pulsefm_windows_rejected_total",
    "Windows left out of an answer, by reason (nonfinite, flat_line, clipping, non_finite_output, ...)",
    ["endpoint", "modality", "reason"],
)
FAILURES = Counter("pulsefm_request_failures_total", "Failed requests by reason", ["reason"])
BATCH_SIZE = Histogram(
    "pulsefm_batch_size", "Segments per backend call", ["modality"], buckets=(1, 2, 4, 8, 16, 32, 48, 64, 128)
)
QUEUE_DEPTH = Gauge(
    "pulsefm_queue_segments",
    "Segments waiting in the micro-batcher",
    ["modality"],
    multiprocess_mode="livesum",
)
CACHE_HITS = Counter("pulsefm_cache_hits_total", "Embedding cache hits", ["cache"])
CACHE_MISSES = Counter("pulsefm_cache_misses_total", "Embedding cache misses", ["cache"])
CACHE_ERRORS = Counter(
    "pulsefm_cache_errors_total", "Cache operations that failed (served without cache)", ["cache", "op"]
)
DROPPED = Counter(
    "pulsefm_dropped_segments_total", "Queued segments dropped because the client left", ["modality"]
)
MODEL_INFO = Info("pulsefm_model", "Served model versions")
BACKEND_UP = Gauge(
    "pulsefm_backend_up",
    "1 if the inference backend answered its last health check (every worker)",
    multiprocess_mode="livemin",
)
ADMISSION = Counter(
    "pulsefm_admission_total",
    "Inference requests admitted or refused (429) before their body was read",
    ["outcome"],
)
BODY_BYTES_IN_FLIGHT = Gauge(
    "pulsefm_body_bytes_in_flight",
    "Request body bytes reserved by admitted requests (all connections)",
    multiprocess_mode="livesum",
)
MODEL_LOAD_FAILURES = Counter(
    "pulsefm_model_load_failures_total",
    "Model versions that failed to load (corrupt file, checksum, contract), per attempt",
    ["modality", "reason"],
)
MODELS_FAILED = Gauge(
    "pulsefm_models_failed",
    "Model versions on disk that are not served because they failed",
    multiprocess_mode="livemax",
)
CACHE_BYPASSED = Counter(
    "pulsefm_cache_bypassed_total",
    "Cache operations skipped while the circuit breaker is open (cache unhealthy)",
    ["cache", "op"],
)
CACHE_BREAKER_OPEN = Gauge(
    "pulsefm_cache_breaker_open",
    "1 while the cache circuit breaker is open (in any worker)",
    ["cache"],
    multiprocess_mode="livemax",
)
CONNECTIONS = Gauge("pulsefm_connections", "Open client connections", multiprocess_mode="livesum")
CONNECTIONS_REFUSED = Counter(
    "pulsefm_connections_refused_total", "Connections closed at once or timed out", ["reason"]
)
RETIRING_CALLS = Counter(
    "pulsefm_retiring_version_calls_total",
    "Answers from a version in its retirement grace period, by caller (API key digest or anonymous)",
    ["modality", "version", "client"],
)
ROUTED = Counter(
    "pulsefm_routed_total",
    "Inference answers by version and how it was chosen: current, canary (a candidate's share), pinned",
    ["modality", "version", "route"],
)
SHADOW_COSINE = Histogram(
    "pulsefm_shadow_cosine",
    "Cosine between the answered embedding and the shadow candidate's, per window",
    ["modality", "current", "candidate"],
    buckets=(-0.5, 0, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0),
)
SHADOW_DELTA = Histogram(
    "pulsefm_shadow_prediction_delta",
    "|candidate - current| probe output per window (target units; probabilities for classifiers)",
    ["modality", "target"],
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20),
)
SHADOW_SKIPPED = Counter(
    "pulsefm_shadow_skipped_total", "Requests not shadowed: the shadow budget was spent", ["modality"]
)


class _InfoOfThisProcess:
    """Info metrics are not kept in the multiprocess files; every worker serves the same models, so
    the answering worker's own are the gateway's."""

    def collect(self) -> Iterator[Metric]:
        return iter(MODEL_INFO.collect())


def exposition() -> bytes:
    """The text of /metrics: this process's metrics, or all workers' with several."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return bytes(generate_latest())
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(_InfoOfThisProcess())
    return bytes(generate_latest(registry))
