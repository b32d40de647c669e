"""The serving contract, defined once: model names, tensor names, dtypes, shapes, Triton settings.

The exporter (`training.export`), the config.pbtxt writer and both gateway backends
(in-process onnxruntime, Triton) read this module; `tests/test_export.py` checks that an
exported repository agrees with it.

    <modality>_encoder   segments  float32 [B, C, T]  ->  embedding      float32 [B, 256]
    <modality>_probes    embedding float32 [B, 256]   ->  probe_outputs  float32 [B, K]

K and the meaning of each probe output column (target, units, regression or probability) are
in the probes model's card (`card.json`, key "outputs"), in column order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pulsefm.preprocess import spec_for
from pulsefm.records import Modality

EMBED_DIM = 256
ENCODER_INPUT = "segments"
ENCODER_OUTPUT = "embedding"
PROBES_INPUT = "embedding"
PROBES_OUTPUT = "probe_outputs"
DTYPE = "float32"
TRITON_DTYPES = {"float32": "TYPE_FP32"}
ONNX_OPSET = 18

# Triton scheduling (also the in-process micro-batcher's defaults)
MAX_BATCH_SIZE = 64
PREFERRED_BATCH_SIZES = (8, 16, 32, 64)
MAX_QUEUE_DELAY_US = 2000
# version policy written into config.pbtxt: serve the latest N versions unless pinned
KEEP_LATEST = 2

# ONNX metadata keys stamped on every exported model
META_PREFIX = "pulsefm."
MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
PLAUSIBILITY_FILE = "plausibility.json"  # beside the probes' model.onnx: ranges + OOD model
CURVES_FILE = "curves.png"  # training curves: in a run folder, and copied beside model.onnx
KINDS = ("encoder", "probes")


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]  # without the batch axis
    dtype: str = DTYPE

    @property
    def triton_dtype(self) -> str:
        return TRITON_DTYPES[self.dtype]


@dataclass(frozen=True)
class ModelContract:
    name: str
    modality: Modality
    kind: str  # "encoder" | "probes"
    input: Tensor
    output: Tensor


def model_name(modality: Modality | str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return f"{Modality(modality)}_{kind}"


def encoder_contract(modality: Modality | str) -> ModelContract:
    spec = spec_for(modality)
    return ModelContract(
        name=model_name(modality, "encoder"),
        modality=Modality(modality),
        kind="encoder",
        input=Tensor(ENCODER_INPUT, (spec.channels, spec.window)),
        output=Tensor(ENCODER_OUTPUT, (EMBED_DIM,)),
    )


def probes_contract(modality: Modality | str, n_outputs: int) -> ModelContract:
    return ModelContract(
        name=model_name(modality, "probes"),
        modality=Modality(modality),
        kind="probes",
        input=Tensor(PROBES_INPUT, (EMBED_DIM,)),
        output=Tensor(PROBES_OUTPUT, (n_outputs,)),
    )


def versions_on_disk(model_dir: Path) -> list[int]:
    """Published versions of one model (numeric sub-folders holding a model file), ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / MODEL_FILE).is_file())
