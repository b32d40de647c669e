"""Training curves as a PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_training_curves(metrics: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss (train / validation), effective rank and learning rate against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in metrics if "loss" in m]
    val = [m for m in metrics if "val_loss" in m]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="train loss")
    ax.plot([m["step"] for m in train], [m["info_nce"] for m in train], label="train InfoNCE", alpha=0.6)
    if val:
        ax.plot([m["step"] for m in val], [m["val_loss"] for m in val], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_title("loss")
    ax.legend()
    ax = axes[1]
    ax.plot([m["step"] for m in train], [m["effective_rank"] for m in train], label="train batch")
    if val:
        ax.plot([m["step"] for m in val], [m["val_effective_rank"] for m in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_title("embedding effective rank")
    ax.legend()
    ax = axes[2]
    ax.plot(
        [m["step"] for m in train],
        [m["alignment"] for m in train],
        label="alignment (lower = closer positives)",
    )
    ax.plot(
        [m["step"] for m in train], [m["uniformity"] for m in train], label="uniformity (lower = more spread)"
    )
    ax.set_xlabel("step")
    ax.set_title("alignment / uniformity")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_store_preview(store: Any, path: str | Path) -> Path:
    """One look at a segment store: example segments per modality, heart-rate histograms, rejects."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pulsefm.preprocess import spec_for

    m = store.manifest
    mods = sorted(m["modality"].unique())
    synthetic = store.synthetic
    fig, axes = plt.subplots(
        len(mods), 2, figsize=(13, 3.2 * len(mods)), squeeze=False, gridspec_kw={"width_ratios": [3, 1]}
    )
    for row, mod in enumerate(mods):
        spec = spec_for(mod)
        idx = store.indices(mod)
        first = int(idx[0])
        seg = store[first]  # (C, W), z-scored
        show = int(10 * spec.fs)  # first 10 s
        t = np.arange(show) / spec.fs
        ax = axes[row][0]
        for c in range(seg.shape[0]):
            ax.plot(t, seg[c, :show] + 4 * c, lw=0.8)
        info = m.iloc[first]
        labels = ", ".join(
            f"{k}={info[k]:.4g}" if isinstance(info[k], float) else f"{k}={info[k]}"
            for k in ("age", "sex", "bmi", "condition")
            if k in m.columns
        )
        ax.set_title(
            f"{mod.upper()} {info['recording_id']} segment {info['segment']} (first 10 s, z-scored, "
            f"channels offset) {labels}",
            fontsize=9,
        )
        ax.set_xlabel("s")
        ax.set_yticks([])
        ax = axes[row][1]
        ax.hist(m.loc[idx, "heart_rate_bpm"].dropna(), bins=30)
        ax.set_title(f"{mod.upper()} segment heart rate (bpm), n={len(idx)}", fontsize=9)
    kind = "SYNTHETIC cohort" if synthetic else str(store.source)
    rej = store.info.get("counts", {}).get("rejected", {})
    fig.suptitle(f"segment store {Path(store.root).name}: {kind}; rejected segments {rej or 'none'}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
