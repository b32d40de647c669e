"""Gateway benchmarks on loopback; every comparison is a ratio measured in one run.

    python -m benchmarks.gateway                       # every section, the shipped model_repository
    python -m benchmarks.gateway --only saturation cache --seconds 10

Sections (each prints a table; all results go to benchmarks/results/gateway.json):

    saturation    /v1/embed segments/s at saturation vs raw onnxruntime on the same model and batch
    binary        end-to-end latency of one PPG segment sent as JSON vs as .npy (binary)
    cache         latency of cache hits vs misses (in-process LRU, and the real Redis on :6379)
    triton        the same gateway on a real Triton server (Triton 2.51, Python backend, CPU) vs in-process
    concurrency   throughput and p50/p99 latency against the number of concurrent clients (+ PNG)

The gateway runs in its own process (`pulse-fm serve`), the load generator here (asyncio + httpx);
both share this machine's cores, which the JSON records. Inputs are SYNTHETIC segments.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from pulsefm import contract as C
from pulsefm.preprocess import spec_for
from service.signals import preprocess
from service.triton_local import TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent
NPY = "application/x-npy"
REDIS_URL = "redis://127.0.0.1:6379/14"  # a database of its own, flushed before use


def synthetic_raw(modality: str, n: int, fs: float, seed: int = 0) -> np.ndarray:
    """n raw SYNTHETIC segments at fs: a pulse-like waveform with noise (no neurokit2 cost here)."""
    spec = spec_for(modality)
    t = np.arange(round(spec.duration_s * fs)) / fs
    rng = np.random.default_rng(seed)
    out = np.empty((n, spec.channels, t.size), dtype=np.float32)
    for i in range(n):
        hr = rng.uniform(55, 95) / 60
        base = np.sin(2 * np.pi * hr * t) + 0.4 * np.sin(4 * np.pi * hr * t + 0.5)
        out[i] = base + 0.05 * rng.normal(size=(spec.channels, t.size))
    return out


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


@contextmanager
def gateway(repo: Path, **env: str) -> Iterator[str]:
    with gateway_process(repo, **env) as (url, _):
        yield url


@contextmanager
def gateway_process(repo: Path, **env: str) -> Iterator[tuple[str, int]]:
    """`pulse-fm serve` on a free port with `env`; yields (url, pid) once /readyz answers 200."""
    port = free_port()
    environ = dict(os.environ, PULSEFM_REPO=str(repo), **env)
    cmd = [sys.executable, "-m", "pulsefm.cli", "serve", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=environ, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("gateway did not become ready")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def load(
    url: str,
    bodies: list[tuple[bytes, dict[str, str], dict[str, Any]]],
    concurrency: int,
    seconds: float,
    segments_per_request: int,
) -> dict[str, float]:
    """`concurrency` clients loop over `bodies` for `seconds`; returns throughput and latency percentiles."""
    lat: list[float] = []
    codes: dict[int, int] = {}
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                content, headers, params = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/embed", content=content, headers=headers, params=params)
                    code = r.status_code
                except httpx.TransportError:  # counted, not fatal: the table shows it
                    code = -1
                lat.append(time.perf_counter() - t0)
                codes[code] = codes.get(code, 0) + 1
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = codes.get(200, 0)
    return {
        "requests": len(lat),
        "ok": ok,
        "status_counts": {str(k): v for k, v in codes.items()},  # type: ignore[dict-item]
        "segments_per_s": ok * segments_per_request / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1000) if lat else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1000) if lat else float("nan"),
    }


def npy_bodies(
    modality: str, n_bodies: int, per_request: int, fs: float
) -> list[tuple[bytes, dict[str, str], dict[str, Any]]]:
    raw = synthetic_raw(modality, n_bodies * per_request, fs, seed=1)
    headers = {"Content-Type": NPY, "Accept": NPY}
    params = {"modality": modality, "fs": fs}
    return [
        (npy_bytes(raw[i * per_request : (i + 1) * per_request]), headers, params) for i in range(n_bodies)
    ]


def raw_ort(repo: Path, modality: str, batch: int, seconds: float, with_preprocessing: bool = False) -> float:
    import onnxruntime as ort

    version = max(C.versions_on_disk(repo / f"{modality}_encoder"))
    sess = ort.InferenceSession(
        str(repo / f"{modality}_encoder" / str(version) / C.MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    spec = spec_for(modality)
    raw = synthetic_raw(modality, batch, spec.fs)
    x = preprocess(raw, spec.fs, spec).data
    sess.run(None, {C.ENCODER_INPUT: x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if with_preprocessing:
            x = preprocess(raw, spec.fs, spec).data
        sess.run(None, {C.ENCODER_INPUT: x})
        n += batch
    return n / (time.perf_counter() - t0)


def section_saturation(args: argparse.Namespace) -> dict[str, Any]:
    mod, per, conc = args.modality, 8, 16
    fs = spec_for(mod).fs
    bodies = npy_bodies(mod, 400, per, fs)  # distinct inputs: no cache hits in the timed part
    with gateway(args.repo, PULSEFM_LRU_ENTRIES="1") as url:
        asyncio.run(load(url, bodies[:20], conc, 2.0, per))  # warm-up
        gw = asyncio.run(load(url, bodies, conc, args.seconds, per))
    raw = raw_ort(args.repo, mod, C.MAX_BATCH_SIZE, args.seconds)
    raw_pre = raw_ort(args.repo, mod, C.MAX_BATCH_SIZE, args.seconds, with_preprocessing=True)
    res = {
        "modality": mod,
        "request_segments": per,
        "concurrency": conc,
        "gateway": gw,
        "raw_ort_segments_per_s": raw,
        "raw_ort_batch": C.MAX_BATCH_SIZE,
        "ratio": gw["segments_per_s"] / raw,
        "raw_ort_with_preprocessing_segments_per_s": raw_pre,
        "ratio_vs_preprocessing_plus_ort": gw["segments_per_s"] / raw_pre,
    }
    print(
        f"\n[saturation] {mod}: gateway {gw['segments_per_s']:.0f} seg/s (p99 {gw['p99_ms']:.0f} ms) "
        f"vs raw onnxruntime {raw:.0f} seg/s at batch {C.MAX_BATCH_SIZE}: "
        f"ratio {res['ratio']:.2f} (goal >= 0.85); vs preprocessing + onnxruntime in one loop "
        f"{raw_pre:.0f} seg/s: ratio {res['ratio_vs_preprocessing_plus_ort']:.2f}"
    )
    return res


def _sequential(
    url: str,
    make: Callable[[int], tuple[bytes, dict[str, str], dict[str, Any]]],
    n: int,
    decode: Callable[[httpx.Response], Any],
) -> list[float]:
    lat = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(n):
            t0 = time.perf_counter()
            content, headers, params = make(i)
            r = client.post("/v1/embed", content=content, headers=headers, params=params)
            r.raise_for_status()
            decode(r)
            lat.append(time.perf_counter() - t0)
    return lat


Body = tuple[bytes, dict[str, str], dict[str, Any]]


def _offset(make: Callable[[int], Body], k: int) -> Callable[[int], Body]:
    return lambda i: make(k + i)


def section_binary(args: argparse.Namespace) -> dict[str, Any]:
    mod = "ppg"
    fs = 64.0
    raw = synthetic_raw(mod, args.requests, fs, seed=2)

    def as_json(i: int) -> tuple[bytes, dict[str, str], dict[str, Any]]:
        body = {"modality": mod, "fs": fs, "segments": raw[i : i + 1].tolist()}
        return json.dumps(body).encode(), {"Content-Type": "application/json"}, {}

    def as_npy(i: int) -> tuple[bytes, dict[str, str], dict[str, Any]]:
        return npy_bytes(raw[i : i + 1]), {"Content-Type": NPY, "Accept": NPY}, {"modality": mod, "fs": fs}

    with gateway(args.repo, PULSEFM_LRU_ENTRIES="1") as url:
        _sequential(url, as_npy, 5, lambda r: r.content)
        # alternate so that drift hits both equally; distinct segments so the cache never answers
        j, b = [], []
        for k in range(0, args.requests, 10):
            j += _sequential(url, _offset(as_json, k), 10, lambda r: np.asarray(r.json()["embeddings"]))
            b += _sequential(url, _offset(as_npy, k), 10, lambda r: np.load(io.BytesIO(r.content)))
    res: dict[str, Any] = {
        "json_ms": {"p50": np.percentile(j, 50) * 1000, "mean": np.mean(j) * 1000},
        "binary_ms": {"p50": np.percentile(b, 50) * 1000, "mean": np.mean(b) * 1000},
        "payload_bytes": {"json": len(as_json(0)[0]), "npy": len(as_npy(0)[0])},
    }
    res["speedup_mean"] = res["json_ms"]["mean"] / res["binary_ms"]["mean"]
    print(
        f"\n[binary] one PPG segment (4 x 3840) end to end: JSON {res['json_ms']['mean']:.1f} ms "
        f"({res['payload_bytes']['json'] / 1e3:.0f} kB) vs .npy {res['binary_ms']['mean']:.1f} ms "
        f"({res['payload_bytes']['npy'] / 1e3:.0f} kB): binary {res['speedup_mean']:.1f}x faster (goal >= 5x)"
    )
    return res


def section_cache(args: argparse.Namespace) -> dict[str, Any]:
    mod, fs = "ecg", 128.0
    raw = synthetic_raw(mod, args.requests + 1, fs, seed=3)
    hit_body = npy_bytes(raw[:1])

    def body(x: bytes) -> tuple[bytes, dict[str, str], dict[str, Any]]:
        return x, {"Content-Type": NPY, "Accept": NPY}, {"modality": mod, "fs": fs}

    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()  # misses must be misses on every run
    out: dict[str, Any] = {}
    for name, env in (("lru", {}), ("redis", {"PULSEFM_REDIS_URL": REDIS_URL})):
        with gateway(args.repo, **env) as url:
            _sequential(url, lambda i: body(hit_body), 3, lambda r: r.content)
            misses = _sequential(
                url, lambda i: body(npy_bytes(raw[1 + i : 2 + i])), args.requests, lambda r: r.content
            )
            hits = _sequential(url, lambda i: body(hit_body), args.requests, lambda r: r.content)
        out[name] = {
            "hit_ms": {"p50": np.percentile(hits, 50) * 1000, "p99": np.percentile(hits, 99) * 1000},
            "miss_ms": {"p50": np.percentile(misses, 50) * 1000, "p99": np.percentile(misses, 99) * 1000},
        }
        h, m = out[name]["hit_ms"], out[name]["miss_ms"]
        print(
            f"\n[cache:{name}] one ECG segment, client-measured: hit p50 {h['p50']:.2f} ms "
            f"p99 {h['p99']:.2f} ms; miss p50 {m['p50']:.2f} ms p99 {m['p99']:.2f} ms (goal hit p50 <= 2 ms)"
        )
    return out


def section_triton(args: argparse.Namespace) -> dict[str, Any]:
    mod, per = args.modality, 8
    fs = spec_for(mod).fs
    bodies = npy_bodies(mod, 300, per, fs)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, TritonServer(args.repo, Path(tmp)) as server:
        for name, env in (
            ("in_process", {}),
            ("triton", {"PULSEFM_BACKEND": "triton", "PULSEFM_TRITON_URL": server.grpc_url}),
        ):
            with gateway(args.repo, PULSEFM_LRU_ENTRIES="1", **env) as url:
                asyncio.run(load(url, bodies[:10], 8, 2.0, per))
                out[name] = {
                    "saturation": asyncio.run(load(url, bodies, 16, args.seconds, per)),
                    "single": asyncio.run(load(url, bodies, 1, args.seconds / 2, per)),
                }
    out["throughput_ratio_triton_over_in_process"] = (
        out["triton"]["saturation"]["segments_per_s"] / out["in_process"]["saturation"]["segments_per_s"]
    )
    print("\n[triton] Triton 2.51, Python backend, CPU (same machine) vs in-process onnxruntime:")
    print(f"{'backend':<12}{'seg/s (c=16)':>14}{'p50 ms (c=1)':>14}{'p99 ms (c=1)':>14}")
    for name in ("in_process", "triton"):
        s, one = out[name]["saturation"], out[name]["single"]
        print(f"{name:<12}{s['segments_per_s']:>14.0f}{one['p50_ms']:>14.1f}{one['p99_ms']:>14.1f}")
    print(f"ratio triton / in-process throughput: {out['throughput_ratio_triton_over_in_process']:.2f}")
    return out


def section_concurrency(args: argparse.Namespace) -> dict[str, Any]:
    mod, per = args.modality, 4
    fs = spec_for(mod).fs
    bodies = npy_bodies(mod, 400, per, fs)
    rows = []
    with gateway(args.repo, PULSEFM_LRU_ENTRIES="1") as url:
        asyncio.run(load(url, bodies[:10], 4, 2.0, per))
        for c in (1, 2, 4, 8, 16, 32, 64):
            r = asyncio.run(load(url, bodies, c, args.seconds / 2, per))
            rows.append({"concurrency": c, **r})
    print(f"\n[concurrency] {mod}, {per} segments per request")
    print(f"{'clients':>8}{'seg/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for r in rows:
        print(f"{r['concurrency']:>8}{r['segments_per_s']:>10.0f}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    cs = [r["concurrency"] for r in rows]
    ax[0].plot(cs, [r["segments_per_s"] for r in rows], "o-")
    ax[0].set(xscale="log", xlabel="concurrent clients", ylabel="segments / s", title="throughput")
    ax[1].plot(cs, [r["p50_ms"] for r in rows], "o-", label="p50")
    ax[1].plot(cs, [r["p99_ms"] for r in rows], "o-", label="p99")
    ax[1].set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="latency")
    ax[1].legend()
    fig.suptitle(
        f"pulse-fm gateway, {mod}, {per} segments/request, onnxruntime in-process "
        f"({platform.machine()}, {os.cpu_count()} cores)"
    )
    fig.tight_layout()
    png = args.out.with_name("gateway_concurrency.png")
    fig.savefig(png, dpi=110)
    return {"modality": mod, "request_segments": per, "rows": rows, "plot": png.name}


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_markdown(doc: dict[str, Any]) -> str:
    """benchmarks/RESULTS.md from the JSON: every number below comes from the last run of each section."""
    m = doc["machine"]
    sec = doc["sections"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks.gateway` (do not edit by hand; rerun instead). Machine: "
        f"{m['platform']}, {m['cpus']} CPUs, Python {m['python']}; no GPU. Inputs are SYNTHETIC "
        "segments; the gateway and the load generator share the machine. Each comparison is a ratio "
        "measured in one run.",
        "",
        f"Command: `{doc['command']}`",
        "",
    ]
    if "saturation" in sec:
        s = sec["saturation"]
        g = s["gateway"]
        lines += [
            "## Gateway throughput at saturation vs raw onnxruntime",
            "",
            "| | segments/s | p50 ms | p99 ms |",
            "|---|---|---|---|",
            _row(
                f"gateway /v1/embed ({s['modality']}, .npy, {s['request_segments']} seg/request, "
                f"{s['concurrency']} clients)",
                f"{g['segments_per_s']:.0f}",
                f"{g['p50_ms']:.1f}",
                f"{g['p99_ms']:.1f}",
            ),
            f"| raw onnxruntime, batch {s['raw_ort_batch']}, preprocessed in advance | "
            f"{s['raw_ort_segments_per_s']:.0f} | | |",
            _row(
                f"the gateway's preprocessing + onnxruntime in one loop, batch {s['raw_ort_batch']}",
                f"{s['raw_ort_with_preprocessing_segments_per_s']:.0f}",
                "",
                "",
            ),
            "",
            f"**Ratio gateway / raw onnxruntime: {s['ratio']:.2f}** (goal >= 0.85); gateway / "
            f"(preprocessing + onnxruntime): {s['ratio_vs_preprocessing_plus_ort']:.2f}. "
            "The gateway's number includes validation, preprocessing (bandpass, resampling, "
            "z-score), HTTP and the load generator sharing the same cores.",
            "",
        ]
    if "binary" in sec:
        b = sec["binary"]
        lines += [
            "## Binary vs JSON input (one PPG segment, 4 x 3840, end to end, sequential)",
            "",
            "| body | bytes | mean ms | p50 ms |",
            "|---|---|---|---|",
            _row(
                "JSON",
                b["payload_bytes"]["json"],
                f"{b['json_ms']['mean']:.1f}",
                f"{b['json_ms']['p50']:.1f}",
            ),
            _row(
                ".npy",
                b["payload_bytes"]["npy"],
                f"{b['binary_ms']['mean']:.1f}",
                f"{b['binary_ms']['p50']:.1f}",
            ),
            "",
            f"**Binary is {b['speedup_mean']:.1f}x faster** (goal >= 5x).",
            "",
        ]
    if "cache" in sec:
        lines += [
            "## Cache hits vs misses (one ECG segment, client-measured, sequential)",
            "",
            "| cache | hit p50 ms | hit p99 ms | miss p50 ms | miss p99 ms |",
            "|---|---|---|---|---|",
        ]
        for name, c in sec["cache"].items():
            lines.append(
                f"| {name} | {c['hit_ms']['p50']:.2f} | {c['hit_ms']['p99']:.2f} | "
                f"{c['miss_ms']['p50']:.2f} | {c['miss_ms']['p99']:.2f} |"
            )
        lines += ["", "Goal: hit p50 <= 2 ms.", ""]
    if "triton" in sec:
        t = sec["triton"]
        lines += [
            "## Triton backend vs in-process (Triton 2.51, Python backend, CPU, same machine)",
            "",
            f"Measured {doc.get('measured', {}).get('triton', 'in an earlier run')} (a section is kept "
            "from its last run when "
            "a later run skips it, e.g. without Triton installed).",
            "",
            "| backend | segments/s (16 clients) | p50 ms (1 client) | p99 ms (1 client) |",
            "|---|---|---|---|",
        ]
        for name in ("in_process", "triton"):
            sat, one = t[name]["saturation"], t[name]["single"]
            lines.append(
                _row(name, f"{sat['segments_per_s']:.0f}", f"{one['p50_ms']:.1f}", f"{one['p99_ms']:.1f}")
            )
        lines += [
            "",
            f"Ratio Triton / in-process throughput: {t['throughput_ratio_triton_over_in_process']:.2f}.",
            "",
        ]
    if "concurrency" in sec:
        c = sec["concurrency"]
        lines += [
            f"## Latency and throughput vs concurrency ({c['modality']}, "
            f"{c['request_segments']} segments/request)",
            "",
            "| clients | segments/s | p50 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for r in c["rows"]:
            lines.append(
                f"| {r['concurrency']} | {r['segments_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
            )
        lines += ["", f"![latency and throughput vs concurrency](results/{c['plot']})", ""]
    return "\n".join(lines) + "\n"


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "saturation": section_saturation,
    "binary": section_binary,
    "cache": section_cache,
    "triton": section_triton,
    "concurrency": section_concurrency,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--modality", default="ppg", choices=["ppg", "ecg"])
    p.add_argument("--seconds", type=float, default=8.0, help="per timed load phase")
    p.add_argument("--requests", type=int, default=200, help="per sequential latency phase")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gateway.json")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = dict(previous.get("sections", {}))
    measured = dict(previous.get("measured", {}))
    for name in args.only:
        results[name] = SECTIONS[name](args)
        measured[name] = time.strftime("%Y-%m-%d", time.gmtime())
    doc = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "command": "python -m benchmarks.gateway " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": "SYNTHETIC segments",
        "sections": results,
        "measured": measured,  # section -> date of its last run
    }
    args.out.write_text(json.dumps(doc, indent=2, default=float))
    md = write_results_md(args.out.parent)
    print(f"\nwrote {args.out} and {md}")
    return 0


def write_results_md(results_dir: Path) -> Path:
    """benchmarks/RESULTS.md from the JSON of each benchmark's last run (gateway, overload, memory,
    serving, training throughput)."""
    from benchmarks import memory, serving, serving_profile, train_throughput
    from benchmarks.overload import markdown_section

    parts = []
    if (results_dir / "gateway.json").is_file():
        parts.append(render_markdown(json.loads((results_dir / "gateway.json").read_text())))
    for name in (
        "overload.json",
        "overload_new_connections.json",
        "overload_uvloop_new_connections.json",
        "overload_workers2.json",
    ):
        if (results_dir / name).is_file():
            parts.append(markdown_section(json.loads((results_dir / name).read_text())))
    if (results_dir / "memory.json").is_file():
        parts.append(memory.markdown_section(json.loads((results_dir / "memory.json").read_text())))
    if (results_dir / "serving.json").is_file():
        parts.append(serving.markdown_section(json.loads((results_dir / "serving.json").read_text())))
    if (results_dir / "serving_profile.json").is_file():
        doc = json.loads((results_dir / "serving_profile.json").read_text())
        parts.append(serving_profile.markdown_section(doc))
    if (results_dir / "serving_litserve.json").is_file():
        parts.append(
            serving.litserve_section(json.loads((results_dir / "serving_litserve.json").read_text()))
        )
    if (results_dir / "train_throughput.json").is_file():
        doc = json.loads((results_dir / "train_throughput.json").read_text())
        parts.append(train_throughput.markdown_section(doc))
    md = results_dir.parent / "RESULTS.md"
    md.write_text("\n".join(parts))
    return md


if __name__ == "__main__":
    raise SystemExit(main())
