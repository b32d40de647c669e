"""Gateway settings: environment variables PULSEFM_<NAME> (or a .env file), with sane defaults.

The defaults run the embedded configuration: in-process onnxruntime on ./model_repository,
an in-process LRU cache, no API keys. Point PULSEFM_REDIS_URL at Redis and PULSEFM_BACKEND at
"triton" (with PULSEFM_TRITON_URL) to scale out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pulsefm import contract as C

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PULSEFM_", env_file=".env", extra="ignore")

    repo: Path = Field(ROOT / "model_repository", description="model repository (Triton layout)")
    backend: Literal["onnxruntime", "triton"] = "onnxruntime"
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: Literal["grpc", "http"] = "grpc"
    ort_threads: int = Field(
        1,
        description="onnxruntime intra-op threads (0 = onnxruntime's default, one per core); 1 leaves the "
        "cores to preprocessing: scale with worker processes instead",
    )
    ort_spinning: bool = Field(
        False, description="let idle onnxruntime threads spin (burns a core when idle)"
    )
    workers: int = Field(
        1, ge=1, le=64, description="gateway processes on one socket (pulse-fm serve; one per core)"
    )
    cpu_workers: int = Field(2, description="threads for decoding + preprocessing (their own bounded pool)")
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="the gateway's event loop. uvloop runs libuv without the GIL and takes it again for "
        "each I/O callback, so beside the CPU threads every accept and read waits for the GIL: with a new "
        "connection per request at 4x overload it collapsed (429 p99 22 s); asyncio takes it once per loop "
        "turn (benchmarks/RESULTS.md, overload sections)",
    )
    gil_switch_interval_ms: float = Field(
        1.0,
        description="`pulse-fm serve` sets sys.setswitchinterval: the event loop waits less for the GIL "
        "behind CPU threads (benchmarks/overload.py: 4x goodput 0.85 -> 0.93 of capacity)",
    )
    gc_freeze: bool = Field(
        True,
        description="`pulse-fm serve` freezes what is alive at startup (gc.freeze): the ~100k objects of "
        "the imported libraries are no longer scanned by each full collection, which held the GIL for "
        "60-90 ms (a 429 or /healthz waiting behind it)",
    )
    blas_threads: int = Field(
        1,
        ge=1,
        description="`pulse-fm serve` limits OpenBLAS/MKL to this many threads (threadpoolctl). LAPACK calls "
        "hold the GIL for their whole run (the drift monitor's eigvalsh); with one thread per core they "
        "contended with onnxruntime for the cores and held it for up to 107 ms, and the event loop waited: "
        "4x overload, 3 rounds each, 429 p99 26-37 vs 40-83 ms, longest rank 14-20 vs 48-107 ms",
    )

    # micro-batching (defaults from the Triton contract)
    max_batch: int = C.MAX_BATCH_SIZE
    max_wait_ms: float = C.MAX_QUEUE_DELAY_US / 1000
    max_inflight_requests: int = Field(
        64,
        description="inference requests admitted at once (per worker), before their body is read; "
        "beyond: 429. Too low and clients retrying at once turn the gateway into a 429 machine (at 32, "
        "64 wrk clients got 85 vs 274 seg/s answered); too high and refusals and /healthz wait behind "
        "admitted work (benchmarks/RESULTS.md)",
    )
    max_inflight_segments: int = Field(
        256, description="segments admitted at once (validated, not yet answered); beyond: 429 + Retry-After"
    )
    max_queued_segments: int = Field(1024, description="micro-batcher queue bound; beyond: 429 + Retry-After")
    retry_after_s: int = 1

    # request limits
    max_segments: int = Field(
        64, description="windows of one request admitted at once (a longer recording goes in steps)"
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="one JSON object per log line, or plain text"
    )
    access_log: bool = Field(True, description="one structured line per request (no bodies, no keys)")
    max_windows: int = Field(4096, description="windows per request (a recording is cut server-side)")
    max_decoded_bytes: int = Field(
        512 * 1024 * 1024,
        description="an uploaded file may not unpack (.zip, .npz, .h5, .parquet) beyond this",
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, description="larger bodies get 413")
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        description="body bytes reserved by admitted requests, all connections; beyond: 429",
    )
    body_timeout_s: float = Field(30.0, description="a body not received within this is a 408")
    header_timeout_s: float = Field(
        10.0, description="a connection whose request headers are not complete: closed"
    )
    keepalive_timeout_s: float = Field(
        75.0,
        description="idle keep-alive connections are closed after this; longer than clients' own idle "
        "expiry (httpx, Node: 5 s), else a request sent as the server closes fails with a reset",
    )
    max_connections: int = Field(1024, description="open connections; beyond, new ones are closed at once")
    max_header_bytes: int = Field(65536, description="request line + headers; beyond: 431 and close")
    shutdown_timeout_s: float = Field(10.0, description="graceful shutdown: open connections get this long")
    send_timeout_s: float = Field(30.0, description="an answer the client does not read within this: closed")
    min_fs: float = 16.0
    max_fs: float = 4096.0
    duration_tolerance: float = Field(0.02, description="relative slack on a segment's duration")

    # cache
    redis_url: str | None = Field(None, description="e.g. redis://127.0.0.1:6379/0; unset = in-process LRU")
    cache_ttl_s: int = 7 * 24 * 3600
    lru_entries: int = 10_000
    redis_timeout_s: float = Field(0.1, description="hard time budget of one cache call")
    cache_breaker_failures: int = Field(3, description="cache failures in a row that open the breaker")
    cache_breaker_cooldown_s: float = Field(5.0, description="the cache is bypassed this long, then retried")

    # security: comma-separated keys. api_keys empty = inference and /v1/models open (embedded
    # default); admin routes are closed unless admin_keys is set (or admin_from_loopback is opted into)
    api_keys: str = ""
    admin_keys: str = ""
    admin_from_loopback: bool = Field(
        False, description="allow admin routes without a key from 127.0.0.1/::1"
    )
    shadow_max_windows: int = Field(
        64, description="windows a shadow candidate may have in flight; beyond, requests are not shadowed"
    )
    retire_grace_s: float = Field(
        7 * 24 * 3600.0,
        description="a version that leaves the serving policy is still answered (to clients that pin it) for "
        "this long, with Deprecation / Sunset headers; then 410 Gone",
    )
    retry_failed_s: float = Field(10.0, description="retry model versions that failed to load every N s")
    loop_lag_every_s: float = Field(
        0.1, ge=0, description="sample the event loop's lag every N s (pulsefm_event_loop_lag_seconds; 0 off)"
    )
    loop_stall_log_ms: float = Field(
        0.0,
        ge=0,
        description="log every thread's stack when the event loop is stalled longer than this (a diagnostic "
        "thread that wakes every few ms: off, 0, unless looking for a stall's cause)",
    )
    startup_wait_s: float = Field(30.0, description="wait this long for the backend before serving 503s")
    watch_repo_s: float = Field(0.0, description="poll the repository for new versions every N s (0 = off)")
    watch_admin_s: float = Field(
        1.0,
        description="every N s, follow admin calls answered by another worker or replica of the repository: "
        "re-read rollout.json, reload on the reload marker (0 = off)",
    )

    def keys(self, admin: bool = False) -> set[str]:
        raw = self.admin_keys if admin else self.api_keys
        return {k.strip() for k in raw.split(",") if k.strip()}
