"""`pulse-fm publish`: validate a candidate and add it to the model repository as the next version.

    pulse-fm publish --encoder runs/tiny/encoder.pt --probes reports/tiny/probes_ppg.json \\
        --repo model_repository [--triton http://127.0.0.1:8000] [--gateway http://127.0.0.1:8080]

Layout (NVIDIA Triton's; `pulsefm.contract` names every model and tensor):

    model_repository/
      ppg_encoder/config.pbtxt     ppg_encoder/<N>/model.onnx + card.json
      ppg_probes/config.pbtxt      ppg_probes/<N>/model.onnx + card.json

An encoder and its probes are published together under the SAME version number N (one number
per modality = one "model version" in the gateway's API). Steps, for each of the two models:

  1. export into a staging folder inside the model folder (same filesystem; Triton ignores
     non-numeric folders), load it with ONNX Runtime, check names/shapes against the contract
     and parity against PyTorch (< 1e-4);
  2. under a lock, rename staging -> <N>: a reader sees no version or a whole one, never half;
  3. rewrite config.pbtxt atomically (version policy: the latest --keep versions, or --pin);
  4. optionally ask a running Triton (explicit model control) and the gateway to load it.

Version policy: Triton serves the latest `--keep` (default 2) versions so that clients
pinned to the previous version keep working during a rollout; `--pin N [N ...]` serves exactly
those. Older folders stay on disk until removed by hand (nothing is deleted by publish).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pulsefm import contract as C
from pulsefm.cli import HelpFormatter
from training.embed import load_artifact
from training.export import build_encoder, build_probes, config_pbtxt
from training.storage import atomic_write

versions = C.versions_on_disk  # the one definition lives in the contract (the gateway reads it too)


@contextmanager
def repo_lock(repo: Path) -> Iterator[None]:
    repo.mkdir(parents=True, exist_ok=True)
    with (repo / ".publish.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())


def stage(model_dir: Path, build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """Build into model_dir/.staging-XXXX; on any error the staging folder is removed."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        card = build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging, card


def commit(staging: Path, card: dict[str, Any], model_dir: Path, version: int) -> Path:
    """Stamp the card with its version and rename staging -> model_dir/<version> (atomic)."""
    card = {**card, "name": model_dir.name, "version": version}
    (staging / C.CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    _fsync_tree(staging)
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    staging.rename(final)
    return final


def write_config(model_dir: Path, text: str) -> None:
    atomic_write(model_dir / "config.pbtxt", lambda tmp: tmp.write_text(text))


def notify(url: str, path: str, api_key: str | None = None) -> str:
    req = urllib.request.Request(url.rstrip("/") + path, data=b"{}", method="POST")
    req.add_header("Content-Type", "application/json")
    if api_key:
        req.add_header("X-API-Key", api_key)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return f"{resp.status}"


def hold_current(repo: Path, modality: str, existing: list[int]) -> None:
    """Pin unpinned traffic to today's newest version (if none is promoted yet) in rollout.json."""
    from service import rollout

    with rollout.changing(repo) as states:  # under the lock the gateways' admin calls take
        r = states.setdefault(modality, rollout.Rollout())
        if r.current is None and existing:
            r.current = max(existing)
            r.record("hold", "publish", to=r.current)


def publish(
    repo: Path,
    encoder_pt: Path,
    probes_json: Path | None = None,
    keep: int = C.KEEP_LATEST,
    pin: Sequence[int] | None = None,
    tensorrt: bool = False,
    hold: bool = False,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export, validate and commit an encoder (and its probes) as the next version. Returns a summary.

    `hold`: unpinned traffic stays on the version it gets now (recorded as `current` in the
    repository's rollout.json) until an admin promotes the new one (canary / shadow first).
    `gate`: the promotion gate's decision and numbers (training/gate.py), written into the card."""
    modality = str(load_artifact(encoder_pt)["modality"])
    enc_dir = repo / C.model_name(modality, "encoder")
    probe_dir = repo / C.model_name(modality, "probes")
    staged: list[tuple[Path, dict[str, Any], Path, C.ModelContract]] = []
    try:
        enc_stage, enc_card = stage(enc_dir, lambda d: build_encoder(encoder_pt, d))
        if gate is not None:
            enc_card["promotion_gate"] = gate
        staged.append((enc_stage, enc_card, enc_dir, C.encoder_contract(modality)))
        if probes_json is not None:
            p_stage, p_card = stage(probe_dir, lambda d: build_probes(probes_json, d, enc_card))
            staged.append((p_stage, p_card, probe_dir, C.probes_contract(modality, len(p_card["outputs"]))))
        with repo_lock(repo):
            version = max([0, *versions(enc_dir), *versions(probe_dir)]) + 1
            if hold:
                hold_current(repo, modality, versions(enc_dir))
            if pin and version not in pin:
                print(f"note: version {version} is published but not served (pinned to {list(pin)})")
            for staging, card, model_dir, _ in staged:
                commit(staging, card, model_dir, version)
            for _, _, model_dir, contract in staged:
                # the config names no version, so it is rewritten after the version folder appears
                write_config(model_dir, config_pbtxt(contract, tensorrt, pinned=pin, keep_latest=keep))
    finally:
        for staging, *_ in staged:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return {
        "modality": modality,
        "version": version,
        "models": [str(d / str(version)) for _, _, d, _ in staged],
        "encoder_sha256": enc_card["sha256"],
        "parity": enc_card["onnx_parity_max_abs_diff"],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse-fm publish", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--encoder", required=True, help="encoder.pt from `pulse-fm train`")
    p.add_argument("--probes", help="probes_<modality>.json from `pulse-fm evaluate`")
    p.add_argument("--repo", default="model_repository", help="model repository (default: %(default)s)")
    p.add_argument("--keep", type=int, default=C.KEEP_LATEST, help="serve the latest K versions")
    p.add_argument("--pin", type=int, nargs="+", help="serve exactly these versions")
    p.add_argument("--tensorrt", action="store_true", help="GPU instances with the TensorRT accelerator")
    p.add_argument(
        "--hold",
        action="store_true",
        help="keep unpinned traffic on today's version until promoted (POST /v1/admin/promote)",
    )
    p.add_argument(
        "--gate",
        metavar="STORE_OR_RECORDINGS",
        help="promotion gate: compare with the current version on this held-out store or recordings folder",
    )
    p.add_argument("--tolerance", type=float, default=0.05, help="gate: allowed relative regression")
    p.add_argument(
        "--force", action="store_true", help="publish even if the gate refuses (recorded in the card)"
    )
    p.add_argument("--no-gate-real", action="store_true", help="gate: skip the real-recording benchmark")
    p.add_argument("--gate-bootstrap", type=int, default=1000, help="gate: bootstrap resamples for the CIs")
    p.add_argument("--triton", help="Triton HTTP URL to load the new version (explicit model control)")
    p.add_argument("--gateway", help="gateway URL to reload models (POST /v1/admin/reload)")
    p.add_argument("--api-key", default=os.environ.get("PULSEFM_ADMIN_KEY"), help="gateway admin key")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    gate = None
    if args.gate:
        from training.gate import evaluate_gate, format_gate

        gate = evaluate_gate(
            Path(args.repo), Path(args.encoder), Path(args.gate), args.tolerance, not args.no_gate_real
        )
        print(format_gate(gate))
        if gate["decision"] == "refused":
            if not args.force:
                print(
                    "error: the promotion gate refused the candidate (--force to publish anyway)",
                    file=sys.stderr,
                )
                return 3
            gate["decision"] = "forced"
    try:
        summary = publish(
            Path(args.repo),
            Path(args.encoder),
            Path(args.probes) if args.probes else None,
            args.keep,
            args.pin,
            args.tensorrt,
            args.hold,
            gate,
        )
    except (FileNotFoundError, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"published {summary['modality']} version {summary['version']}: {', '.join(summary['models'])} "
        f"(parity {summary['parity']:.1e})"
    )
    if args.triton:
        for model in summary["models"]:
            name = Path(model).parent.name
            print(f"triton load {name}: {notify(args.triton, f'/v2/repository/models/{name}/load')}")
    if args.gateway:
        print(f"gateway reload: {notify(args.gateway, '/v1/admin/reload', args.api_key)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
