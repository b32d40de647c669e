"""Serving performance against references, with an external load generator (wrk), in one run.

    python -m benchmarks.serving                 # ~10 min: both models, 1/16/64 clients, 2 rounds
    python -m benchmarks.serving --quick         # ~3 min: the shipped model, 1 round

Servers, each its own process, all started before the first round and measured interleaved
(rounds x models x clients x bodies x servers; the median of the rounds is reported):
    gateway        `pulse-fm serve`, cache disabled (PULSEFM_LRU_ENTRIES=0), 1 worker
    gateway x2     the same with `--workers 2` (one process per core)
    reference      benchmarks/reference_server.py: Starlette + orjson + onnxruntime + micro-batcher,
                   the same preprocessing, none of the gateway's checks (what a user writes by hand)
and in this process, on the same model: raw onnxruntime (batch 64, preprocessed in advance) and
preprocessing + onnxruntime in one loop (batch 64). Plus the gateway's cache: hits (the same body
again, LRU on) against misses, at 16 clients.

wrk (Debian's package; installed here with apt-get when missing and run as root) takes
0.02-0.06 of a core, where an in-process Python client would take a third of the server's. One
PPG segment (4 x 3840) per request, as .npy (binary) or JSON. Models: the shipped one (tiny) and a
recipe-size encoder (PRESETS["ppg"], ~3.2 M parameters, random init: speed only). SYNTHETIC inputs.
Results: benchmarks/results/serving.json, serving.png, and the serving section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks.gateway import ROOT, gateway, npy_bytes, raw_ort, synthetic_raw
from pulsefm import contract as C
from service.triton_local import free_port

RESULTS = ROOT / "benchmarks" / "results"
LUA = """
local f = io.open(os.getenv("WRK_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CTYPE")
wrk.headers["Accept"] = os.getenv("WRK_ACCEPT")
function done(summary, latency, requests)
  io.write(string.format("WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"non2xx\\": %d, " ..
    "\\"errors\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d}\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed: apt-get install wrk (Debian/Ubuntu) or brew install wrk")
    return found


def wrk(url: str, body: Path, ctype: str, clients: int, seconds: float) -> dict[str, float]:
    """One closed-loop wrk run: `clients` connections on one thread; segments/s and latency."""
    script = body.with_suffix(".lua")
    script.write_text(LUA)
    env = dict(os.environ, WRK_BODY=str(body), WRK_CTYPE=ctype, WRK_ACCEPT="application/x-npy")
    out = subprocess.run(
        [ensure_wrk(), "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(script), url],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    m = re.search(r"WRKJSON (\{.*\})", out)
    if m is None:
        raise RuntimeError(f"wrk printed no summary:\n{out[-2000:]}")
    r = json.loads(m.group(1))
    ok = r["requests"] - r["non2xx"]
    return {
        "per_s": ok / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "failed": r["non2xx"] + r["errors"],
    }


@contextmanager
def _server(name: str, cmd: list[str], probe: urllib.request.Request, **popen: Any) -> Iterator[None]:
    """Start a server in its own process group; yield once `probe` (a request to it) answers;
    then stop the whole group (LitServe's server and inference processes with it)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, **popen)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(probe, timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.3)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        time.sleep(2)  # then whatever of the group is still there (a server process outlives its parent)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def reference(model: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "benchmarks.reference_server", "--model", str(model), "--port", str(port)]
    probe = urllib.request.Request(
        url + "/v1/embed?fs=64",
        data=npy_bytes(synthetic_raw("ppg", 1, 64.0)),
        headers={"Content-Type": "application/x-npy"},
    )
    with _server("reference server", cmd, probe):
        yield url


def recipe_repo(root: Path) -> Path:
    """A model repository with a recipe-size PPG encoder (random init, BatchNorm calibrated on
    SYNTHETIC segments so that its outputs are O(1)): for speed only."""
    import torch

    from training.config import PRESETS
    from training.embed import calibrate_batchnorm
    from training.export import parity_segments
    from training.publish import publish
    from training.train import build_model, encoder_artifact

    cfg = PRESETS["ppg"]
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    calibrate_batchnorm(model.encoder, parity_segments("ppg", 32, seed=1))
    art = root / "recipe-ppg.pt"
    torch.save(encoder_artifact(cfg, model, 0, {"settings": {"source": "random init (speed only)"}}), art)
    publish(root / "repo", art, None)
    return root / "repo"


def encoder_file(repo: Path) -> Path:
    version = max(C.versions_on_disk(repo / "ppg_encoder"))
    return repo / "ppg_encoder" / str(version) / C.MODEL_FILE


def bodies(folder: Path) -> dict[str, tuple[Path, str]]:
    x = synthetic_raw("ppg", 1, 64.0, seed=3)
    npy = folder / "body.npy"
    npy.write_bytes(npy_bytes(x))
    doc = folder / "body.json"
    doc.write_text(json.dumps({"modality": "ppg", "fs": 64, "segments": x.round(5).tolist()}))
    return {"binary": (npy, "application/x-npy"), "json": (doc, "application/json")}


@contextmanager
def litserve(python: str, model: Path) -> Iterator[str]:
    """benchmarks/litserve_server.py under `python` (an environment with litserve installed)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [python, "-m", "benchmarks.litserve_server", "--model", str(model), "--port", str(port)]
    body = json.dumps({"modality": "ppg", "fs": 64, "segments": synthetic_raw("ppg", 1, 64.0).tolist()})
    probe = urllib.request.Request(
        url + "/v1/embed", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with _server("LitServe", cmd, probe, env=dict(os.environ, PYTHONPATH=str(ROOT))):
        yield url


def run_litserve(args: argparse.Namespace) -> dict[str, Any]:
    """The gateway (1 and 2 workers), the hand-written reference and LitServe on the shipped model,
    JSON bodies (LitServe's format), 1/16/64 clients, interleaved rounds."""
    repo = ROOT / "model_repository"
    path, ctype = bodies(Path(tempfile.mkdtemp(prefix="pulsefm-litserve-")))["json"]
    clients = [1, 16, 64]
    rows: dict[str, list[dict[str, float]]] = {}
    with ExitStack() as stack:
        env = {"PULSEFM_LRU_ENTRIES": "0", "PULSEFM_ACCESS_LOG": "false"}
        urls = {
            "gateway": stack.enter_context(gateway(repo, **env)),
            "gateway x2": stack.enter_context(gateway(repo, PULSEFM_WORKERS="2", **env)),
            "reference": stack.enter_context(reference(encoder_file(repo))),
            "litserve": stack.enter_context(litserve(args.litserve, encoder_file(repo))),
        }
        for rnd in range(args.rounds):
            for n in clients:
                for server, url in urls.items():
                    r = wrk(url + "/v1/embed", path, ctype, n, args.seconds)
                    rows.setdefault(f"{server}|{n}", []).append(r)
                    failed = f"  FAILED {r['failed']:.0f}" if r["failed"] else ""
                    print(f"round {rnd + 1} {server:10s} json {n:3d} clients: {r['per_s']:7.1f} seg/s  "
                          f"p99 {r['p99_ms']:7.1f} ms{failed}", flush=True)  # fmt: skip
    version = subprocess.run(
        [args.litserve, "-c", "import litserve; print(litserve.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "python -m benchmarks.serving --litserve PYTHON",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "litserve": version,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "clients": clients,
        "results": {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rows.items()},
    }


def litserve_section(doc: dict[str, Any]) -> str:
    res = doc["results"]
    lines = [
        f"## Serving: the gateway against LitServe {doc['litserve']} (wrk, JSON, 1 PPG segment/request)",
        "",
        f"`{doc['command']}` at {doc['when']}; {doc['machine']}; shipped model; {doc['rounds']} interleaved "
        f"round(s) of {doc['seconds']:g} s per cell, medians; LitServe in its own environment "
        "(`make bench-litserve`), batching 64 / 2 ms like the others. SYNTHETIC inputs.",
        "",
        "| clients | gateway seg/s | gateway x2 seg/s | reference seg/s | LitServe seg/s | "
        "gateway / LitServe | gateway x2 / LitServe (goal >= 1.2) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in doc["clients"]:
        g, g2, r, lit = (res[f"{s}|{n}"]["per_s"] for s in ("gateway", "gateway x2", "reference", "litserve"))
        best = max(g, g2) / lit
        lines.append(
            f"| {n} | {g:.0f} | {g2:.0f} | {r:.0f} | {lit:.0f} | {g / lit:.2f} | {g2 / lit:.2f} "
            f"({'met' if best >= 1.2 else '**missed**'}) |"
        )
    return "\n".join([*lines, ""])


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pulsefm-serving-"))
    models = {"shipped": ROOT / "model_repository"}
    if not args.quick:
        print("building the recipe-size encoder ...", flush=True)
        models["recipe"] = recipe_repo(tmp / "recipe")
    body = bodies(tmp)
    clients = [1, 16, 64]
    rows: dict[tuple[str, str, str, int], list[dict[str, float]]] = {}
    engine: dict[str, dict[str, float]] = {}
    cache: dict[str, dict[str, float]] = {}
    for model_name, repo in models.items():
        onnx = encoder_file(repo)
        engine[model_name] = {
            "raw_onnxruntime": raw_ort(repo, "ppg", 64, args.seconds),
            "preprocess_onnxruntime": raw_ort(repo, "ppg", 64, args.seconds, with_preprocessing=True),
        }
        with ExitStack() as stack:
            env = {"PULSEFM_LRU_ENTRIES": "0", "PULSEFM_ACCESS_LOG": "false"}
            urls = {
                "gateway": stack.enter_context(gateway(repo, **env)),
                "gateway x2": stack.enter_context(gateway(repo, PULSEFM_WORKERS="2", **env)),
                "reference": stack.enter_context(reference(onnx)),
            }
            for rnd in range(args.rounds):
                for n in clients:
                    for kind, (path, ctype) in body.items():
                        for server, url in urls.items():
                            query = "/v1/embed?modality=ppg&fs=64" if kind == "binary" else "/v1/embed"
                            r = wrk(url + query, path, ctype, n, args.seconds)
                            rows.setdefault((model_name, server, kind, n), []).append(r)
                            print(
                                f"round {rnd + 1} {model_name:8s} {server:10s} {kind:6s} {n:3d} clients: "
                                f"{r['per_s']:7.1f} seg/s  p50 {r['p50_ms']:7.1f} ms  "
                                f"p99 {r['p99_ms']:7.1f} ms"
                                + (f"  FAILED {r['failed']:.0f}" if r["failed"] else ""),
                                flush=True,
                            )
        if model_name == "shipped":
            path, ctype = body["binary"]
            with gateway(
                repo, PULSEFM_ACCESS_LOG="false"
            ) as url:  # the one body, cached after its first call
                hit = wrk(url + "/v1/embed?modality=ppg&fs=64", path, ctype, 16, args.seconds)
                hit1 = wrk(url + "/v1/embed?modality=ppg&fs=64", path, ctype, 1, args.seconds)
            with gateway(repo, PULSEFM_ACCESS_LOG="false", PULSEFM_LRU_ENTRIES="0") as url:
                miss = wrk(url + "/v1/embed?modality=ppg&fs=64", path, ctype, 16, args.seconds)
            cache = {"hit_16": hit, "miss_16": miss, "hit_1": hit1}
    med = {
        "|".join(map(str, k)): {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rows.items()
    }
    return {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "python -m benchmarks.serving" + (" --quick" if args.quick else ""),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "clients": clients,
        "models": list(models),
        "results": med,
        "engine": engine,
        "cache": cache,
    }


def ratios(doc: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(what, measured ratio, goal) for every goal of the serving issue that this run measures."""
    res, out = doc["results"], []

    def per_s(model: str, server: str, kind: str, n: int) -> float:
        return float(res[f"{model}|{server}|{kind}|{n}"]["per_s"])

    for model in doc["models"]:
        for kind in ("binary", "json"):
            for n in doc["clients"]:
                for server in ("gateway", "gateway x2"):
                    out.append(
                        (
                            f"{model}, {kind}, {n} clients: {server} / reference",
                            per_s(model, server, kind, n) / per_s(model, "reference", kind, n),
                            ">= 1.0",
                        )
                    )
        best = max(per_s(model, s, "binary", n) for s in ("gateway", "gateway x2") for n in doc["clients"])
        one = max(per_s(model, "gateway", "binary", n) for n in doc["clients"])
        eng = doc["engine"][model]
        out.append(
            (
                f"{model}: gateway (1 worker) / (preprocess + onnxruntime loop)",
                one / eng["preprocess_onnxruntime"],
                ">= 0.85",
            )
        )
        out.append(
            (
                f"{model}: best gateway / raw onnxruntime",
                best / eng["raw_onnxruntime"],
                ">= 0.5" if model == "shipped" else ">= 0.9",
            )
        )
        out.append(
            (
                f"{model}: JSON / binary (gateway, 16 clients)",
                per_s(model, "gateway", "json", 16) / per_s(model, "gateway", "binary", 16),
                ">= 0.5",
            )
        )
        out.append(
            (
                f"{model}: 2 workers / 1 worker (binary, 64 clients)",
                per_s(model, "gateway x2", "binary", 64) / per_s(model, "gateway", "binary", 64),
                ">= 1.6",
            )
        )
    if doc["cache"]:
        c = doc["cache"]
        out.append(
            (
                "cache hit throughput / miss throughput (16 clients)",
                c["hit_16"]["per_s"] / c["miss_16"]["per_s"],
                ">= 3",
            )
        )
        out.append(("cache hit p50 ms (1 client)", c["hit_1"]["p50_ms"], "<= 1.5"))
    return out


def _met(value: float, goal: str) -> bool:
    op, target = goal.split()
    return value >= float(target) if op == ">=" else value <= float(target)


def markdown_section(doc: dict[str, Any]) -> str:
    lines = [
        "## Serving: the gateway against a hand-written server and the engine (wrk, 1 segment/request)",
        "",
        f"`{doc['command']}` at {doc['when']}; {doc['machine']}; {doc['rounds']} interleaved round(s) of "
        f"{doc['seconds']:g} s per cell, medians. wrk and the servers share the machine. SYNTHETIC inputs; "
        "the recipe-size encoder is random-init (speed only).",
        "",
        "| model | body | clients | gateway seg/s | gateway x2 seg/s | reference seg/s | "
        "gateway p99 ms | x2 p99 ms | reference p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    res = doc["results"]
    for model in doc["models"]:
        for kind in ("binary", "json"):
            for n in doc["clients"]:
                g, g2, r = (res[f"{model}|{s}|{kind}|{n}"] for s in ("gateway", "gateway x2", "reference"))
                lines.append(
                    f"| {model} | {kind} | {n} | {g['per_s']:.0f} | {g2['per_s']:.0f} | {r['per_s']:.0f} | "
                    f"{g['p99_ms']:.1f} | {g2['p99_ms']:.1f} | {r['p99_ms']:.1f} |"
                )
    lines += [
        "",
        "| engine, in one process (batch 64) | " + " | ".join(doc["models"]) + " |",
        "|---|" + "---|" * len(doc["models"]),
    ]
    for key, label in (
        ("raw_onnxruntime", "raw onnxruntime, preprocessed in advance"),
        ("preprocess_onnxruntime", "preprocessing + onnxruntime in one loop"),
    ):
        lines.append(
            f"| {label} | " + " | ".join(f"{doc['engine'][m][key]:.0f} seg/s" for m in doc["models"]) + " |"
        )
    lines += ["", "| ratio | measured | goal | |", "|---|---|---|---|"]
    for what, value, goal in ratios(doc):
        lines.append(f"| {what} | {value:.2f} | {goal} | {'met' if _met(value, goal) else '**missed**'} |")
    lines += ["", "![throughput and p99 vs clients](results/serving.png)", ""]
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(doc["models"]), 2, figsize=(11, 4 * len(doc["models"])), squeeze=False)
    res = doc["results"]
    for row, model in enumerate(doc["models"]):
        ax_t, ax_p = axes[row]
        for server, style in (("gateway", "-o"), ("gateway x2", "-s"), ("reference", "--^")):
            for kind, alpha in (("binary", 1.0), ("json", 0.5)):
                xs = doc["clients"]
                for ax, key in ((ax_t, "per_s"), (ax_p, "p99_ms")):
                    ys = [res[f"{model}|{server}|{kind}|{n}"][key] for n in xs]
                    ax.plot(xs, ys, style, alpha=alpha, label=f"{server} {kind}")
        ax_t.axhline(
            doc["engine"][model]["raw_onnxruntime"], color="k", lw=0.8, ls=":", label="raw onnxruntime"
        )
        ax_t.set(xscale="log", xlabel="clients", ylabel="segments/s", title=f"{model} model: throughput")
        ax_p.set(
            xscale="log", yscale="log", xlabel="clients", ylabel="p99 ms", title=f"{model} model: p99 latency"
        )
        ax_t.legend(fontsize=7)
    fig.suptitle("SYNTHETIC inputs, wrk on loopback, 2-core machine", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="the shipped model only, one round")
    p.add_argument(
        "--litserve",
        metavar="PYTHON",
        help="only the LitServe comparison, LitServe run by this interpreter (make bench-litserve)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 1
    ensure_wrk()
    if args.litserve:
        doc = run_litserve(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "serving_litserve.json").write_text(json.dumps(doc, indent=2))
        print("\n" + litserve_section(doc))
        from benchmarks.gateway import write_results_md

        print(f"wrote {RESULTS / 'serving_litserve.json'} and {write_results_md(RESULTS)}")
        return 0
    doc = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(doc, indent=2))
    plot(doc, RESULTS / "serving.png")
    section = markdown_section(doc)
    print("\n" + section)
    from benchmarks.gateway import write_results_md

    print(f"wrote {RESULTS / 'serving.json'}, serving.png and {write_results_md(RESULTS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
