"""benchmarks/memory.py without a gateway: its RSS sampler and its tables."""

from __future__ import annotations

import os
import time

from benchmarks.memory import PeakRss, markdown_section, rss_mib, table


def test_the_sampler_sees_this_process_grow() -> None:
    before = rss_mib(os.getpid())
    with PeakRss(os.getpid()) as peak:
        block = bytearray(64 << 20)  # 64 MiB, touched
        block[::4096] = b"x" * len(block[::4096])
        time.sleep(0.2)
    del block
    assert peak.peak >= before + 48, (before, peak.peak)


def test_the_table_names_every_row() -> None:
    result = {
        "baseline_mib": 176,
        "rows": [
            {
                "load": "round 1: 12 bodies of 61 MB at once",
                "ok": 4,
                "refused": 8,
                "peak_mib": 787,
                "after_5s_mib": 427,
            }
        ],
    }
    text = table(result)
    assert "| idle, after one request | | | | 176 |" in text and "| 4 | 8 | 787 | 427 |" in text
    doc = {"setup": {"date": "2026-12-03", "machine": "x"}, "result": result}
    assert markdown_section(doc).startswith("\n## Memory under large bodies") and text in markdown_section(
        doc
    )
