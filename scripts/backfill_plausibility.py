"""Add plausibility.json (training label ranges + OOD model) to published probe versions that
predate it, from the store their probes were fitted on.

    python -m scripts.backfill_plausibility --store stores/syneval400 --repo model_repository

The shipped probes were fitted by `make evaluate` on stores/syneval400 (SYNTHETIC, seed 1; make it
with `make stores/syneval400/store.json`), split by participant as the probes card says. For each
served version this embeds that store with the version's own model.onnx, fits
`training.probe.fit_plausibility` on the same split, writes plausibility.json beside the probes'
model.onnx and records it (with a note saying it was added later) in the probes card. The model
files are not touched. New versions get it at export: `pulse-fm evaluate` / `probe` write it into
the probes JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from pulsefm import contract as C
from pulsefm.cli import HelpFormatter
from training.embed import embed_store, embedding_matrix, load_encoder
from training.export import write_plausibility
from training.probe import fit_plausibility


def backfill(repo: Path, store: Path, force: bool = False) -> list[dict[str, object]]:
    done = []
    for modality in ("ppg", "ecg"):
        probes_root = repo / C.model_name(modality, "probes")
        for version in C.versions_on_disk(probes_root):
            pdir = probes_root / str(version)
            card = json.loads((pdir / C.CARD_FILE).read_text())
            if card.get("plausibility") and not force:
                continue
            encoder = load_encoder(repo / C.model_name(modality, "encoder") / str(version) / C.MODEL_FILE)
            table = embed_store(store, encoder)
            split = card.get("split") or {"test_fraction": 0.3, "seed": 0}
            targets = [o["target"] for o in card["outputs"]]
            plaus = fit_plausibility(
                table, embedding_matrix(table), targets, float(split["test_fraction"]), int(split["seed"])
            )
            note = f"added after publication by scripts/backfill_plausibility.py from {store} (SYNTHETIC)"
            card["plausibility"] = write_plausibility(pdir, plaus.to_dict(), note)
            (pdir / C.CARD_FILE).write_text(json.dumps(card, indent=2))
            done.append({"modality": modality, "version": version} | card["plausibility"])
            print(
                f"{modality} v{version}: OOD threshold {plaus.ood.threshold:.3f} "
                f"({plaus.ood.n_train} train / {plaus.ood.n_heldout} held-out windows), ranges {plaus.ranges}"
            )
    return done


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--store", required=True, help="the store the probes were fitted on")
    p.add_argument("--repo", default="model_repository", help="model repository")
    p.add_argument("--force", action="store_true", help="refit versions that already have one")
    args = p.parse_args(argv)
    backfill(Path(args.repo), Path(args.store), args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
