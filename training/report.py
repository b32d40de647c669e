"""The evaluation report: one HTML page plus PNGs (probe scatter/ROC, PCA, training curves)."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.embed import embedding_matrix
from training.probe import REGRESSION, ProbeResult, headline_metric

SET_LABELS = {
    "ssl": "SSL encoder",
    "random_init": "random-init encoder",
    "band_power": "log band power (no training)",
    "hr_hrv": "HR + HRV features",
    "true_params": "true simulator parameters of the modality",
}
COLOURS = {"ssl": "C0", "random_init": "C7", "band_power": "C1", "hr_hrv": "C2", "true_params": "C3"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_probes(results: dict[str, list[ProbeResult]], path: Path, title: str) -> None:
    """Regression: predicted vs true on the test participants; classification: ROC curves."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    targets = [r.target for r in results["ssl"]]
    fig, axes = plt.subplots(1, len(targets), figsize=(3.6 * len(targets), 3.6), squeeze=False)
    for ax, (i, target) in zip(axes[0], enumerate(targets), strict=True):
        for name, rs in results.items():
            r = rs[i]
            y, p = np.asarray(r.test_y), np.asarray(r.test_pred)
            if r.kind == REGRESSION:
                if name not in ("ssl", "random_init"):
                    continue
                ax.scatter(
                    y,
                    p,
                    s=6,
                    alpha=0.5,
                    color=COLOURS[name],
                    label=f"{SET_LABELS[name]} MAE {r.metrics['mae']:.2f}",
                )
            else:
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, color=COLOURS[name], label=f"{SET_LABELS[name]} AUC {r.metrics['auc']:.2f}")
        if results["ssl"][i].kind == REGRESSION:
            lo, hi = ax.get_xlim()
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xlabel(f"true {target} ({results['ssl'][i].units})")
            ax.set_ylabel("predicted")
        else:
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
        ax.set_title(target)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pca(emb: np.ndarray, labels: Any, path: Path, title: str) -> None:
    """2-D PCA of participant-mean embeddings, one panel per attribute."""
    plt = _plt()
    x = emb - emb.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    explained = s[:2] ** 2 / max(float((s**2).sum()), 1e-12)
    cols = [c for c in ("age", "bmi", "heart_rate_bpm", "sex", "condition") if c in labels.columns]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.5 * len(cols), 3.3), squeeze=False)
    for ax, c in zip(axes[0], cols, strict=True):
        v = labels[c].to_numpy(dtype=float)
        sc = ax.scatter(
            xy[:, 0], xy[:, 1], c=v, s=9, cmap="coolwarm" if c in ("sex", "condition") else "viridis"
        )
        fig.colorbar(sc, ax=ax, fraction=0.046)
        ax.set_title(c)
        ax.set_xlabel(f"PC1 ({explained[0]:.0%})")
        ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(row: dict[str, Any]) -> str:
    metric = headline_metric(row["kind"])
    lo, hi = row["ci95"][metric]
    extra = f"<br><small>R² {row['metrics']['r2']:.2f}</small>" if metric == "mae" else ""
    return f"{row['metrics'][metric]:.3g} <small>[{lo:.3g}, {hi:.3g}]</small>{extra}"


def _probe_table(res: dict[str, Any]) -> str:
    names = [n for n in SET_LABELS if n in res["probes"]]
    head = "".join(f"<th>{SET_LABELS[n]}</th>" for n in names)
    head += "<th>SSL better than random-init by<br><small>(paired bootstrap)</small></th>"
    body = []
    for i, row in enumerate(res["probes"]["ssl"]):
        metric = "MAE (" + row["units"] + ", lower is better)" if row["kind"] == REGRESSION else "AUC"
        cells = "".join(f"<td>{_cell(res['probes'][n][i])}</td>" for n in names)
        cmp = res["ssl_vs_random_init"][i]
        lo, hi = cmp["ci95"]
        verdict = "clearly" if cmp["clearly_better"] else "not clearly"
        cells += (
            f"<td class='{verdict.replace(' ', '-')}'>{cmp['improvement']:.3g} "
            f"<small>[{lo:.3g}, {hi:.3g}]</small><br><small>{verdict}</small></td>"
        )
        body.append(f"<tr><th>{row['target']}</th><td>{html.escape(metric)}</td>{cells}</tr>")
    wins = sum(c["clearly_better"] for c in res["ssl_vs_random_init"])
    return (
        f"<table><tr><th>target</th><th>metric</th>{head}</tr>{''.join(body)}</table>"
        f"<p>SSL clearly beats random-init (95% CI of the paired improvement above 0) on "
        f"<b>{wins} of {len(res['ssl_vs_random_init'])}</b> targets.</p>"
    )


def _ablation_table(ab: dict[str, Any]) -> str:
    rows = ab["runs"]
    targets = [p["target"] for p in rows[0]["probes"]]
    head = "".join(f"<th>{t}</th>" for t in targets)
    body = []
    for run in rows:
        cells = "".join(f"<td>{_cell(p)}</td>" for p in run["probes"])
        body.append(
            f"<tr><th>{html.escape(run['name'])}</th><td>{run['effective_rank']:.1f}</td>"
            f"<td>{run['final_loss']:.3f}</td>{cells}</tr>"
        )
    return (
        f"<p>{html.escape(ab['description'])}</p><table><tr><th>run</th><th>effective rank</th>"
        f"<th>final train loss</th>{head}</tr>{''.join(body)}</table>"
    )


def _real_section(real: dict[str, Any]) -> str:
    recs = ", ".join(f"{k} ({v})" for k, v in real["recordings"].items())
    rej = ", ".join(f"{k} ({v})" for k, v in real["rejected"].items()) or "none"
    rows = []
    for name in ("ssl", "random_init", "band_power", "predict_mean"):
        f = real["features"][name]
        lo, hi = f["hr_mae_ci95"]
        ret = (
            f"<td>{f['top1']:.2f} [{f['top1_ci95'][0]:.2f}, {f['top1_ci95'][1]:.2f}]</td>"
            f"<td>{f['chance']:.2f}</td>"
            if "top1" in f
            else "<td>-</td><td>-</td>"
        )
        label = SET_LABELS.get(name, "predict the training mean")
        rows.append(f"<tr><th>{label}</th><td>{f['hr_mae']:.2f} [{lo:.2f}, {hi:.2f}] bpm</td>{ret}</tr>")
    verdict = "passes" if real["verdict"]["passes"] else "does not pass"
    return (
        f"<p>REAL recordings (windows kept after quality checks, {real['overlap']:.0%} overlap): "
        f"{html.escape(recs)}. Rejected: {html.escape(rej)}. 95% CIs: bootstrap over recordings.</p>"
        "<table><tr><th>features</th><th>HR probe MAE (leave-one-recording-out)</th>"
        "<th>same-recording top-1</th><th>chance</th></tr>" + "".join(rows) + "</table>"
        f"<p>Rule: {html.escape(real['rule'])}. The SSL encoder <b>{verdict}</b>.</p>"
        "<p><small>Retrieval never counts a neighbour that shares samples with the query.</small></p>"
    )


CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}.clearly{background:#e6f4ea}.not-clearly{background:#fdecea}
.synthetic{background:#fff3cd;border:1px solid #e0c36c;padding:.6em 1em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}small{color:#666}
"""


def write_report(
    results: list[dict[str, Any]], ablations: dict[str, Any] | None, out: Path, command: str
) -> Path:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pulse-fm evaluation</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>pulse-fm evaluation</h1>",
        f"<p>Generated {time.strftime('%Y-%m-%d %H:%M')} by <code>{html.escape(command)}</code>.</p>",
    ]
    if any(r["synthetic"] for r in results):
        parts.append(
            "<p class='synthetic'><b>SYNTHETIC data.</b> The probe numbers below come from a simulated "
            "cohort (training/synthetic.py) whose attributes drive the simulators; they show that the "
            "pipeline works and how methods compare, not how the model does on people.</p>"
        )
    for res in results:
        mod = res["modality"]
        tag = " (SYNTHETIC)" if res["synthetic"] else ""
        title = f"{mod.upper()} linear probes{tag}"
        plot_probes(res["_results"], out / f"probes_{mod}.png", title)
        per_participant = res["_pca"]
        plot_pca(
            embedding_matrix(per_participant),
            per_participant,
            out / f"pca_{mod}.png",
            f"{mod.upper()} SSL embeddings, participant means, PCA{tag}",
        )
        parts += [
            f"<h2>{mod.upper()}{tag}</h2>",
            f"<p>Encoder <code>{res['encoder_version']}</code>, "
            f"preprocessing <code>{res['preprocess_version']}</code>; "
            f"evaluation store <code>{html.escape(res['store'])}</code>: {res['participants']} participants, "
            f"{res['segments']} segments. Test metrics on held-out participants with "
            "participant-bootstrap 95% CIs. "
            f"Effective rank of the embeddings: SSL {res['effective_rank']['ssl']:.1f}, "
            f"random-init {res['effective_rank']['random_init']:.1f}.</p>",
            _probe_table(res),
            "<p><small>heart_rate labels come from the same neurokit2 beat detector as the HR + HRV "
            "features, so that baseline's near-zero heart-rate error is by construction. The true-parameter "
            "baseline knows each participant's resting rate, not the per-recording offsets.</small></p>",
            f"<img src='probes_{mod}.png' alt='probe plots'>",
            f"<img src='pca_{mod}.png' alt='PCA of embeddings'>",
        ]
        if res.get("curves"):
            parts += ["<h3>Pretraining curves</h3>", f"<img src='{res['curves']}' alt='training curves'>"]
        if res.get("real"):
            parts += [f"<h3>{mod.upper()} on real recordings</h3>", _real_section(res["real"])]
    if ablations:
        parts += [
            "<h2>Ablations" + (" (SYNTHETIC)" if ablations.get("synthetic") else "") + "</h2>",
            _ablation_table(ablations),
        ]
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
