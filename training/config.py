"""One frozen config for a pretraining run, with presets. The config is saved in every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from training.augment import AUGMENT_PRESETS
from training.model import EncoderConfig


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "ppg"
    modality: str = "ppg"
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(in_channels=4, width=0.89))
    head_hidden: int = 1024
    head_out: int = 128
    head_dropout: float = 0.1
    # optimisation (recipe: Adam 1e-3, wd 1e-5, StepLR every 125 validation intervals x 0.5, batch 256)
    batch_size: int = 256
    steps: int = 50_000
    lr: float = 1e-3
    weight_decay: float = 1e-5
    val_every: int = 250  # steps per validation interval (also the checkpoint interval)
    lr_step_intervals: int = 125  # lr x lr_gamma every this many val intervals, whatever `steps` is
    lr_gamma: float = 0.5
    # objective
    temperature: float = 0.04
    koleo_weight: float = 0.1
    momentum: float = 0.99
    use_momentum: bool = True
    positives: str = "participant"  # or "segment" (ablation)
    augment: str = "ppg"  # AUGMENT_PRESETS key
    # data
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    val_batches: int = 4
    # "random": pairs drawn across the whole store (a global batch, sliced per rank); "stream":
    # each rank reads its own shards in sequence through a shuffle buffer (training/stream.py)
    loader: str = "random"
    shuffle_buffer: int = 1024  # pairs, with loader="stream"
    # runtime
    seed: int = 0
    bf16: bool = True  # autocast on CUDA only
    sync_bn: bool = False  # SyncBatchNorm under DDP (CUDA only)
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.augment not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augment {self.augment!r}; choose one of {sorted(AUGMENT_PRESETS)}")
        if self.positives not in ("participant", "segment"):
            raise ValueError(f"unknown positives {self.positives!r}; choose participant or segment")
        if self.loader not in ("random", "stream"):
            raise ValueError(f"unknown loader {self.loader!r}; choose random or stream")
        if self.loader == "stream" and self.positives != "participant":
            raise ValueError("loader=stream makes participant positives only")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        return cls(encoder=EncoderConfig.from_dict(d.pop("encoder")), **d)

    def replace(self, **changes: Any) -> TrainConfig:
        enc_changes = {k[len("encoder.") :]: v for k, v in changes.items() if k.startswith("encoder.")}
        top = {k: v for k, v in changes.items() if not k.startswith("encoder.")}
        enc = dataclasses.replace(self.encoder, **enc_changes) if enc_changes else self.encoder
        return dataclasses.replace(self, encoder=enc, **top)


PRESETS: dict[str, TrainConfig] = {
    # ~3.2 M parameter PPG encoder, recipe hyper-parameters
    "ppg": TrainConfig(),
    # ~2.4 M parameter single-lead ECG encoder
    "ecg": TrainConfig(
        preset="ecg", modality="ecg", encoder=EncoderConfig(in_channels=1, width=0.77), augment="ecg"
    ),
    # a small PPG model for tests and CPU demos: minutes on 2 cores
    "tiny": TrainConfig(
        preset="tiny",
        encoder=EncoderConfig(
            in_channels=4, width=0.25, depth=0.34, stem_channels=16, embed_dim=256, drop_path=0.0
        ),
        head_hidden=256,
        head_out=64,
        batch_size=32,
        steps=300,
        val_every=50,
        lr_step_intervals=4,
        temperature=0.1,
        val_batches=2,
        log_every=5,
    ),
}


def parse_value(field_type: Any, text: str) -> Any:
    if field_type in (bool, "bool"):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    for t, name in ((int, "int"), (float, "float")):
        if field_type in (t, name):
            return t(text)
    return text


def apply_overrides(cfg: TrainConfig, pairs: list[str]) -> TrainConfig:
    """`key=value` strings (e.g. `lr=3e-4`, `encoder.width=0.5`) applied to a config."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    types |= {f"encoder.{f.name}": f.type for f in fields(EncoderConfig)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types or key in ("encoder", "encoder.stages"):
            raise ValueError(
                f"bad override {pair!r}; settable keys: {sorted(k for k in types if k != 'encoder')}"
            )
        changes[key] = parse_value(types[key], value)
    return cfg.replace(**changes)
