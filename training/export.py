"""`pulse-fm export`: encoder.pt -> ONNX, probe heads -> ONNX, Triton config.pbtxt and model cards.

    pulse-fm export --encoder runs/tiny/encoder.pt --probes reports/tiny/probes_ppg.json --out export/ppg

Writes OUT/<modality>_encoder/model.onnx and OUT/<modality>_probes/model.onnx, each with a
card.json and a config.pbtxt, after checking ONNX Runtime against PyTorch (max abs diff
< 1e-4 at batch 1 and 32). `pulse-fm publish` does the same straight into a versioned
model repository. Names, shapes and Triton settings come from `pulsefm.contract`.

Probe heads are ONE small graph per modality: embedding [B, 256] -> probe_outputs [B, K]
(a linear map; classifier columns pass through a sigmoid). One graph means one Triton call
per request instead of K; the column order, targets and units are in the probes card.

TensorRT: `--tensorrt` writes configs that ask Triton's onnxruntime backend for its TensorRT
execution provider (FP16) on GPU instances. It is only exercised where a GPU exists.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pulsefm import contract as C
from pulsefm.cli import HelpFormatter
from pulsefm.preprocess import spec_for
from pulsefm.records import Modality
from training.embed import encoder_net, file_digest, file_sha256, load_artifact

PARITY_TOL = 1e-4
_EXPORT_LOCK = threading.Lock()  # torch.onnx.export (dynamo tracing) is not thread-safe


def _stamp(model: Any, meta: dict[str, str]) -> None:
    import onnx

    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = C.META_PREFIX + k, v
    onnx.checker.check_model(model)


def export_encoder(art: dict[str, Any], out: Path, meta: dict[str, str]) -> None:
    """The encoder in eval mode as ONNX with a dynamic batch axis."""
    import onnx
    import torch

    contract = C.encoder_contract(art["modality"])
    net = encoder_net(art)
    example = torch.randn(2, *contract.input.dims)
    with tempfile.TemporaryDirectory() as tmp, _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            net,
            (example,),
            str(raw),
            input_names=[contract.input.name],
            output_names=[contract.output.name],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
            opset_version=C.ONNX_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        model = onnx.load(str(raw))
    _stamp(model, meta)
    onnx.save(model, str(out))


def probe_arrays(heads: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-head standardisation + linear coefficients stacked for K heads (raw weights if unfolded absent)."""
    n = len(heads[0]["weights"])

    def get(h: dict[str, Any], key: str, default: Any) -> Any:
        return h[key] if h.get(key) not in (None, []) else default

    return {
        "mean": np.array([get(h, "mean", np.zeros(n)) for h in heads], dtype=np.float64),  # (K, 256)
        "scale": np.array([get(h, "scale", np.ones(n)) for h in heads], dtype=np.float64),
        "coef": np.array([get(h, "coef", h["weights"]) for h in heads], dtype=np.float64),
        "intercept": np.array([get(h, "intercept", h["bias"]) for h in heads], dtype=np.float64),
        "is_prob": np.array([h["kind"] == "classification" for h in heads]),
    }


def probes_reference(heads: list[dict[str, Any]], emb: np.ndarray) -> np.ndarray:
    """What the probe graph computes, in float64 numpy: (B, K)."""
    a = probe_arrays(heads)
    z = (emb.astype(np.float64)[:, None, :] - a["mean"][None]) / a["scale"][None]  # (B, K, 256)
    y = np.einsum("bkd,kd->bk", z, a["coef"]) + a["intercept"]
    return np.where(a["is_prob"], 1 / (1 + np.exp(-y)), y)


def export_probes(heads: list[dict[str, Any]], out: Path, meta: dict[str, str]) -> None:
    """K linear probe heads as one graph on the embedding [B, 256] -> [B, K].

    Each head keeps its own standardisation: y_k = ((x - mean_k) / scale_k) . coef_k + intercept_k
    (folding it into raw-space weights loses float32 precision); classifier columns get a sigmoid.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = probe_arrays(heads)
    k = len(heads)
    contract = C.probes_contract(meta["modality"], k)
    inits = {
        "mean": a["mean"].astype(np.float32)[None],  # (1, K, 256)
        "scale": a["scale"].astype(np.float32)[None],
        "coef": a["coef"].astype(np.float32)[None],
        "intercept": a["intercept"].astype(np.float32),  # (K,)
        "is_prob": a["is_prob"],
        "axes1": np.array([1], dtype=np.int64),
        "axes2": np.array([2], dtype=np.int64),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", [contract.input.name, "axes1"], ["x3"]),  # (B, 1, 256)
            helper.make_node("Sub", ["x3", "mean"], ["centred"]),  # (B, K, 256)
            helper.make_node("Div", ["centred", "scale"], ["z"]),
            helper.make_node("Mul", ["z", "coef"], ["terms"]),
            helper.make_node("ReduceSum", ["terms", "axes2"], ["dot"], keepdims=0),  # (B, K)
            helper.make_node("Add", ["dot", "intercept"], ["linear"]),
            helper.make_node("Sigmoid", ["linear"], ["prob"]),
            helper.make_node("Where", ["is_prob", "prob", "linear"], [contract.output.name]),
        ],
        contract.name,
        [helper.make_tensor_value_info(contract.input.name, TensorProto.FLOAT, ["batch", C.EMBED_DIM])],
        [helper.make_tensor_value_info(contract.output.name, TensorProto.FLOAT, ["batch", k])],
        [numpy_helper.from_array(v, name) for name, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", C.ONNX_OPSET)], producer_name="pulse-fm"
    )
    model.ir_version = 10
    _stamp(model, meta)
    onnx.save(model, str(out))


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_contract(path: Path, contract: C.ModelContract) -> None:
    """Input/output names, dtypes and non-batch dims of an ONNX file match the contract."""
    sess = ort_session(path)
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    for got, want in ((inp, contract.input), (outp, contract.output)):
        if got.name != want.name or got.type != "tensor(float)" or tuple(got.shape[1:]) != want.dims:
            raise ValueError(
                f"{path}: tensor {got.name} {got.type} {got.shape} does not match the contract "
                f"{want.name} float32 [batch, {', '.join(map(str, want.dims))}]"
            )


def parity_segments(modality: str, n: int = 32, seed: int = 0) -> np.ndarray:
    """z-scored SYNTHETIC segments of the modality for parity checks (no download needed)."""
    from pulsefm.pipeline import process_array
    from training.synthetic import CohortConfig, simulate_participant

    spec = spec_for(modality)
    cfg = CohortConfig(n_participants=1, recordings=1, modalities=(modality,), seed=seed)
    _, recs = simulate_participant(cfg, 0)
    segs = process_array(recs[0].signal, recs[0].fs, spec, overlap=0.9, check=False).data
    reps = int(np.ceil(n / len(segs)))
    return np.ascontiguousarray(np.tile(segs, (reps, 1, 1))[:n], dtype=np.float32)


def encoder_parity(art: dict[str, Any], onnx_path: Path, x: np.ndarray) -> float:
    """max |ORT - PyTorch eval| over `x` at batch 1 and at full batch, divided by
    max(1, max |PyTorch|): absolute for O(1) outputs, relative for larger ones. float32 cannot do
    better than ~1e-6 relative, so a fixed absolute bound fails on large outputs (seen: 1.1e-4 at
    outputs of 99, 1e-6 relative, with onnxruntime 1.32)."""
    import torch

    net = encoder_net(art)
    sess = ort_session(onnx_path)
    contract = C.encoder_contract(art["modality"])
    worst = 0.0
    for batch in (x[:1], x):
        with torch.inference_mode():
            ref = net(torch.from_numpy(batch)).numpy()
        got = sess.run([contract.output.name], {contract.input.name: batch})[0]
        worst = max(worst, float(np.max(np.abs(ref - got))) / max(1.0, float(np.max(np.abs(ref)))))
    return worst


def probes_parity(heads: list[dict[str, Any]], onnx_path: Path, emb: np.ndarray) -> float:
    ref = probes_reference(heads, emb)
    got = ort_session(onnx_path).run([C.PROBES_OUTPUT], {C.PROBES_INPUT: emb.astype(np.float32)})[0]
    return float(np.max(np.abs(ref - got)))


def config_pbtxt(
    contract: C.ModelContract,
    tensorrt: bool = False,
    instances: int = 1,
    pinned: Sequence[int] | None = None,
    keep_latest: int = C.KEEP_LATEST,
) -> str:
    """Triton model configuration (text protobuf) for a contract."""

    def tensor(t: C.Tensor) -> str:
        dims = ", ".join(map(str, t.dims))
        return f'  {{\n    name: "{t.name}"\n    data_type: {t.triton_dtype}\n    dims: [ {dims} ]\n  }}'

    preferred = ", ".join(str(b) for b in C.PREFERRED_BATCH_SIZES)
    policy = (
        f"{{ specific: {{ versions: [ {', '.join(map(str, pinned))} ] }} }}"
        if pinned
        else f"{{ latest: {{ num_versions: {keep_latest} }} }}"
    )
    lines = [
        f'name: "{contract.name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {C.MAX_BATCH_SIZE}",
        f"input [\n{tensor(contract.input)}\n]",
        f"output [\n{tensor(contract.output)}\n]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {preferred} ]",
        f"  max_queue_delay_microseconds: {C.MAX_QUEUE_DELAY_US}",
        "}",
        f"instance_group [ {{ count: {instances} kind: {'KIND_GPU' if tensorrt else 'KIND_CPU'} }} ]",
        f"version_policy: {policy}",
    ]
    if tensorrt:
        lines += [
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {",
            '  name: "tensorrt"',
            '  parameters { key: "precision_mode" value: "FP16" }',
            '  parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
            "} ] } }",
        ]
    return "\n".join(lines) + "\n"


def encoder_meta(art: dict[str, Any], source_digest: str) -> dict[str, str]:
    store = art.get("store") or {}
    return {
        "modality": str(art["modality"]),
        "kind": "encoder",
        "preprocess_version": str(art["preprocess"]["version"]),
        "training_data": str(store.get("source") or "unknown"),
        "source_digest": source_digest,
        "step": str(art.get("step")),
    }


def encoder_card(art: dict[str, Any], meta: dict[str, str], onnx_path: Path, parity: float) -> dict[str, Any]:
    spec = art["preprocess"]
    synthetic = meta["training_data"] == "synthetic"
    return {
        "kind": "encoder",
        "modality": meta["modality"],
        "training_data": (
            "SYNTHETIC cohort generated by `pulse-fm prepare --synthetic` (training/synthetic.py); "
            "not trained on people"
            if synthetic
            else meta["training_data"]
        ),
        "store": art.get("store"),
        "preprocess": spec,
        "preprocess_version": spec["version"],
        "sampling_rate_hz": spec["fs"],
        "segment_samples": spec["window"],
        "segment_seconds": spec["window"] / spec["fs"],
        "channels": spec["channels"],
        "embedding_dim": C.EMBED_DIM,
        "train_config": art.get("train_config"),
        "train_step": art.get("step"),
        "source_encoder_pt_sha256_12": meta["source_digest"],
        "onnx_parity_max_abs_diff": parity,
        "sha256": file_sha256(onnx_path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def probes_card(doc: dict[str, Any], meta: dict[str, str], onnx_path: Path, parity: float) -> dict[str, Any]:
    return {
        "kind": "probes",
        "modality": meta["modality"],
        "encoder_version": doc.get("encoder_version"),
        "preprocess_version": doc.get("preprocess_version"),
        "training_data": doc.get("training_data"),
        "split": doc.get("split"),
        "outputs": [
            {
                "target": h["target"],
                "kind": h["kind"],
                "units": h["units"],
                "level": h["level"],
                "test_metrics": h["metrics"],
                "test_ci95": h["ci95"],
            }
            for h in doc["probes"]
        ],
        "onnx_parity_max_abs_diff": parity,
        "sha256": file_sha256(onnx_path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def build_encoder(encoder_pt: Path, dest: Path) -> dict[str, Any]:
    """dest/model.onnx + dest/card.json for an encoder, parity-checked. Returns the card."""
    art = load_artifact(encoder_pt)
    meta = encoder_meta(art, file_digest(encoder_pt))
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / C.MODEL_FILE
    export_encoder(art, onnx_path, meta)
    check_contract(onnx_path, C.encoder_contract(art["modality"]))
    parity = encoder_parity(art, onnx_path, parity_segments(str(art["modality"])))
    if not parity < PARITY_TOL:
        raise ValueError(
            f"{encoder_pt}: ONNX/PyTorch max diff {parity:.2e} >= {PARITY_TOL} (see encoder_parity)"
        )
    card = encoder_card(art, meta, onnx_path, parity)
    (dest / C.CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    curves = Path(encoder_pt).parent / C.CURVES_FILE  # the run's training curves travel with the model
    if curves.is_file():
        shutil.copy(curves, dest / C.CURVES_FILE)
    return card


def build_probes(
    probes_json: Path, dest: Path, encoder_card_: dict[str, Any] | None = None
) -> dict[str, Any]:
    doc = json.loads(probes_json.read_text())
    heads = doc["probes"]
    modality = str(Modality(doc["modality"]))
    if encoder_card_ and doc.get("preprocess_version") != encoder_card_["preprocess_version"]:
        raise ValueError(f"{probes_json}: probes were fitted on another preprocessing than the encoder's")
    meta = {
        "modality": modality,
        "kind": "probes",
        "preprocess_version": str(doc.get("preprocess_version")),
        "training_data": str(doc.get("training_data")),
        "encoder_version": str(doc.get("encoder_version")),
        "targets": ",".join(h["target"] for h in heads),
    }
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / C.MODEL_FILE
    export_probes(heads, onnx_path, meta)
    check_contract(onnx_path, C.probes_contract(modality, len(heads)))
    a = probe_arrays(heads)  # embeddings distributed like the probes' training data
    emb = a["mean"][0] + a["scale"][0] * np.random.default_rng(0).normal(size=(32, C.EMBED_DIM))
    parity = probes_parity(heads, onnx_path, emb.astype(np.float32))
    if not parity < PARITY_TOL:
        raise ValueError(f"{probes_json}: probe ONNX max abs diff {parity:.2e} >= {PARITY_TOL}")
    card = probes_card(doc, meta, onnx_path, parity)
    if doc.get("plausibility"):
        card["plausibility"] = write_plausibility(dest, doc["plausibility"])
    (dest / C.CARD_FILE).write_text(json.dumps(card, indent=2))
    return card


def write_plausibility(dest: Path, doc: dict[str, Any], note: str = "") -> dict[str, Any]:
    """dest/plausibility.json (training ranges + OOD model, checked to load); its card summary."""
    from pulsefm.plausibility import Plausibility

    plaus = Plausibility.from_dict(doc)
    path = dest / C.PLAUSIBILITY_FILE
    path.write_text(json.dumps(plaus.to_dict()))
    summary = plaus.summary() | {"file": C.PLAUSIBILITY_FILE, "sha256": file_sha256(path)}
    return summary | ({"note": note} if note else {})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse-fm export", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--encoder", required=True, help="encoder.pt from `pulse-fm train`")
    p.add_argument("--probes", help="probes_<modality>.json from `pulse-fm evaluate` (or probes.json)")
    p.add_argument("--out", required=True, help="folder; gets <modality>_encoder/ and <modality>_probes/")
    p.add_argument("--tensorrt", action="store_true", help="config.pbtxt for GPU instances with TensorRT")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        art_modality = str(load_artifact(args.encoder)["modality"])
        enc_dir = out / C.model_name(art_modality, "encoder")
        card = build_encoder(Path(args.encoder), enc_dir)
        (enc_dir / "config.pbtxt").write_text(
            config_pbtxt(C.encoder_contract(art_modality), tensorrt=args.tensorrt)
        )
        print(f"{enc_dir}: parity {card['onnx_parity_max_abs_diff']:.1e}, sha256 {card['sha256'][:12]}")
        if args.probes:
            pdir = out / C.model_name(art_modality, "probes")
            pcard = build_probes(Path(args.probes), pdir, card)
            n = len(pcard["outputs"])
            (pdir / "config.pbtxt").write_text(
                config_pbtxt(C.probes_contract(art_modality, n), args.tensorrt)
            )
            print(f"{pdir}: {n} outputs, parity {pcard['onnx_parity_max_abs_diff']:.1e}")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
