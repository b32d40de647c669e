"""Memory of the gateway under large bodies: peak and retained RSS.

    python -m benchmarks.memory            # 12 concurrent ~61 MB PPG .npy bodies, 3 rounds
    python -m benchmarks.memory --requests 12 --windows 1000 --rounds 3

The case of the hardening issue: many large bodies at once. The gateway (`pulse-fm serve`, its
defaults, cache off so that every round computes) admits what its body budget allows
(`PULSEFM_MAX_BODY_BYTES_IN_FLIGHT`, 256 MiB) and refuses the rest with 429 before reading them.
Each round sends `--requests` distinct bodies at once; RSS is sampled every 20 ms (peak) and read
again 5 s after the round (retained). A burst of one-window requests, 64 at a time, gives the
working set of ordinary load to compare with. Prints a table, writes benchmarks/results/memory.json.
SYNTHETIC inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.gateway import gateway_process, npy_bytes, write_results_md

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "memory.json"
WINDOW = 3840  # one PPG window: 60 s at 64 Hz


def rss_mib(pid: int) -> float:
    with Path(f"/proc/{pid}/status").open() as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return kb / 1024


class PeakRss:
    """The highest RSS of `pid`, sampled every 20 ms while in use."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()


async def post_all(url: str, bodies: list[bytes], concurrency: int) -> list[int]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def one(body: bytes) -> int:
            async with limit:
                r = await c.post(
                    url + "/v1/embed",
                    params={"modality": "ppg", "fs": "64"},
                    content=body,
                    headers={"Content-Type": "application/x-npy"},
                )
                return r.status_code

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((1, 4, WINDOW * args.windows)).astype(np.float32)
    size_mb = len(npy_bytes(signal)) / 1e6
    rows: list[dict[str, Any]] = []
    with gateway_process(args.repo, PULSEFM_LRU_ENTRIES="1", PULSEFM_ACCESS_LOG="false") as (url, pid):
        small = [npy_bytes(rng.standard_normal((1, 4, WINDOW)).astype(np.float32)) for _ in range(2000)]
        asyncio.run(post_all(url, small[:1], 1))
        baseline = rss_mib(pid)
        with PeakRss(pid) as peak:
            statuses = asyncio.run(post_all(url, small, 64))
        time.sleep(5)
        rows.append(
            {
                "load": f"{len(small)} one-window requests, 64 at once",
                "ok": statuses.count(200),
                "refused": statuses.count(429),
                "peak_mib": round(peak.peak),
                "after_5s_mib": round(rss_mib(pid)),
            }
        )
        for k in range(args.rounds):
            bodies = [npy_bytes(signal + np.float32(k * args.requests + i)) for i in range(args.requests)]
            t0 = time.perf_counter()
            with PeakRss(pid) as peak:
                statuses = asyncio.run(post_all(url, bodies, args.requests))
            seconds = time.perf_counter() - t0
            del bodies
            time.sleep(5)
            rows.append(
                {
                    "load": f"round {k + 1}: {args.requests} bodies of {size_mb:.0f} MB at once",
                    "ok": statuses.count(200),
                    "refused": statuses.count(429),
                    "seconds": round(seconds, 1),
                    "peak_mib": round(peak.peak),
                    "after_5s_mib": round(rss_mib(pid)),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"baseline_mib": round(baseline), "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = ["| load | 200 | 429 | peak RSS MiB | RSS 5 s after, MiB |", "|---|---|---|---|---|"]
    lines.append(f"| idle, after one request | | | | {result['baseline_mib']} |")
    for r in result["rows"]:
        lines.append(f"| {r['load']} | {r['ok']} | {r['refused']} | {r['peak_mib']} | {r['after_5s_mib']} |")
    return "\n".join(lines)


def markdown_section(doc: dict[str, Any]) -> str:
    s = doc["setup"]
    return (
        "\n## Memory under large bodies (peak and retained RSS)\n\n"
        f"Written by `python -m benchmarks.memory` on {s['date']} ({s['machine']}); one worker, the "
        "gateway's defaults (body budget 256 MiB across connections), cache off, SYNTHETIC PPG .npy "
        "bodies. RSS of the gateway process, sampled every 20 ms; 'after' 5 s after the load.\n\n"
        + table(doc["result"])
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    p.add_argument("--requests", type=int, default=12, help="large bodies sent at once per round")
    p.add_argument("--windows", type=int, default=1000, help="PPG windows per body (1000: ~61 MB)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    result = run(args)
    print(table(result))
    setup = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.platform()}, Python {sys.version.split()[0]}",
        "requests": args.requests,
        "windows": args.windows,
        "rounds": args.rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setup": setup, "result": result}, indent=2))
    print(f"-> {args.out}")
    if args.out == OUT:
        write_results_md(OUT.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
