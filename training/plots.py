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
