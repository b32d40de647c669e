"""Where the gateway's time goes at saturation: py-spy samples of the gateway under wrk load.

    python -m benchmarks.serving_profile                # ~1 min: 16 clients, .npy and JSON bodies

The gateway (`pulse-fm serve`, 1 worker, cache off, the shipped model) is driven by wrk at 16
clients with one PPG segment per request, as in benchmarks/serving.py, while `py-spy record --gil`
samples the thread that holds the GIL (the gateway is GIL-bound: one event loop does HTTP,
admission and hand-offs, so GIL time is the budget that decides throughput). Each sample is put in
one component by the innermost frame that belongs to a known package (onnxruntime, scipy, numpy,
orjson, prometheus_client, pulsefm, service, fastapi, pydantic, starlette, anyio, uvicorn /
httptools, asyncio, concurrent.futures / threading), and in one thread role (event loop, CPU pool,
ORT pool). This is the "profile says what remains" of the serving issue: which share of the GIL is
the gateway's own code, and which is the framework and the engine. SYNTHETIC inputs.
Results: benchmarks/results/serving_profile.json and its section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.gateway import ROOT, gateway_process
from benchmarks.serving import RESULTS, bodies, ensure_wrk, wrk

# (component, path fragments of its frames), most specific first; a frame is "name (path:line)"
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("onnxruntime", ("onnxruntime/",)),
    ("scipy (filters, resampling)", ("scipy/",)),
    ("numpy", ("numpy/",)),
    ("orjson / json", ("orjson", "json/")),
    ("prometheus_client", ("prometheus_client/",)),
    ("pulsefm (preprocessing, checks)", ("pulsefm/",)),
    ("service (gateway code)", ("service/",)),
    ("fastapi / pydantic", ("fastapi/", "pydantic/", "pydantic_core/")),
    ("starlette", ("starlette/",)),
    ("anyio", ("anyio/",)),
    ("uvicorn / httptools / uvloop", ("uvicorn/", "httptools/", "uvloop/", "h11/")),
    ("asyncio", ("asyncio/", "selectors.py")),
    ("thread hand-offs (concurrent.futures, threading)", ("concurrent/futures/", "threading.py", "queue.py")),
)
OTHER = "other"


def component(stack: list[str]) -> str:
    """The component of the innermost frame of `stack` (root first) that a known package owns."""
    for frame in reversed(stack):
        for name, fragments in COMPONENTS:
            if any(f in frame for f in fragments):
                return name
    return OTHER


NAMED_THREADS = (("MainThread", "event loop"), ("cpu", "CPU pool"), ("ort", "ORT pool"))


def thread_role(stack: list[str]) -> str:
    """By the thread's name where py-spy gives it ('thread (ID): NAME'): a callback that uvloop runs
    has no event-loop frame under it. Else by the frames."""
    name = next((f.partition("): ")[2] for f in stack if f.startswith("thread (") and "): " in f), "")
    if name:
        return next((role for prefix, role in NAMED_THREADS if name.startswith(prefix)), "other thread")
    if any("concurrent/futures/thread.py" in f for f in stack):
        return "ORT pool" if any("onnxruntime/" in f or "backends.py" in f for f in stack) else "CPU pool"
    if any(k in f for f in stack for k in ("run_forever", "uvloop", "asyncio/", "uvicorn/")):
        return "event loop"
    return "other thread"


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) format: 'frame;frame;...;frame COUNT' per line, root first."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def shares(samples: list[tuple[list[str], int]]) -> dict[str, dict[str, float]]:
    by_component: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    for stack, n in samples:
        by_component[component(stack)] += n
        by_thread[thread_role(stack)] += n
    total = max(1, sum(by_component.values()))
    return {
        "component": {k: v / total for k, v in by_component.most_common()},
        "thread": {k: v / total for k, v in by_thread.most_common()},
        "samples": {"n": float(total)},
    }


def profile(seconds: float, clients: int) -> dict[str, Any]:
    beside = Path(sys.executable).with_name("py-spy")  # the venv's, when its bin/ is not on PATH
    pyspy = str(beside) if beside.is_file() else shutil.which("py-spy")
    if pyspy is None:
        raise SystemExit("py-spy is needed: pip install py-spy (in the dev extra)")
    tmp = Path(tempfile.mkdtemp(prefix="pulsefm-profile-"))
    body = bodies(tmp)
    out: dict[str, Any] = {}
    env = {"PULSEFM_LRU_ENTRIES": "0", "PULSEFM_ACCESS_LOG": "false"}
    with gateway_process(ROOT / "model_repository", **env) as (url, pid):
        for kind, (path, ctype) in body.items():
            query = "/v1/embed?modality=ppg&fs=64" if kind == "binary" else "/v1/embed"
            wrk(url + query, path, ctype, clients, 2.0)  # warm up
            raw = tmp / f"{kind}.txt"
            spy = subprocess.Popen(
                [
                    *(pyspy, "record", "--pid", str(pid), "--gil", "--threads", "--nonblocking"),
                    *("--rate", "250", "--duration", f"{seconds:g}", "--format", "raw", "--output", str(raw)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)
            load = wrk(url + query, path, ctype, clients, seconds - 1.0)
            _, err = spy.communicate(timeout=seconds + 60)
            if spy.returncode != 0 or not raw.is_file():
                raise RuntimeError(f"py-spy failed ({spy.returncode}): {err[-1000:]}")
            out[kind] = {"load": load, **shares(parse_raw(raw.read_text()))}
            print(f"{kind}: {load['per_s']:.0f} seg/s under py-spy; {json.dumps(out[kind]['component'])}")
    return {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "python -m benchmarks.serving_profile",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": seconds,
        "clients": clients,
        "profiles": out,
    }


def markdown_section(doc: dict[str, Any]) -> str:
    kinds = list(doc["profiles"])
    lines = [
        f"## Serving: where the gateway's GIL time goes ({doc['clients']} clients, 1 worker, cache off)",
        "",
        f"`{doc['command']}` at {doc['when']}; {doc['machine']}; py-spy `--gil` at 250 Hz for "
        f"{doc['seconds']:g} s per body, under wrk (1 PPG segment/request; throughput is lower than "
        "unprofiled). Each sample goes to the innermost frame a known package owns. SYNTHETIC inputs.",
        "",
        "| component | " + " | ".join(f"{k} share" for k in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    names = [c for c, _ in COMPONENTS] + [OTHER]
    for name in names:
        vals = [doc["profiles"][k]["component"].get(name, 0.0) for k in kinds]
        if any(v >= 0.005 for v in vals):
            lines.append(f"| {name} | " + " | ".join(f"{v:.0%}" for v in vals) + " |")
    lines += ["", "| thread | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for role in ("event loop", "CPU pool", "ORT pool", "other thread"):
        vals = [doc["profiles"][k]["thread"].get(role, 0.0) for k in kinds]
        lines.append(f"| {role} | " + " | ".join(f"{v:.0%}" for v in vals) + " |")
    lines.append(
        "| GIL samples | " + " | ".join(f"{doc['profiles'][k]['samples']['n']:.0f}" for k in kinds) + " |"
    )
    lines.append(
        "| seg/s while profiled | "
        + " | ".join(f"{doc['profiles'][k]['load']['per_s']:.0f}" for k in kinds)
        + " |"
    )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=12.0, help="profiled seconds per body")
    p.add_argument("--clients", type=int, default=16)
    args = p.parse_args(argv)
    ensure_wrk()
    doc = profile(args.seconds, args.clients)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_profile.json").write_text(json.dumps(doc, indent=2))
    print("\n" + markdown_section(doc))
    from benchmarks.gateway import write_results_md

    print(f"wrote {RESULTS / 'serving_profile.json'} and {write_results_md(RESULTS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
