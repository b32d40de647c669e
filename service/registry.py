"""What the model repository holds: served versions per modality, with their cards.

A "model version" in the API is one integer per modality: `<mod>_encoder/<N>` and, when present,
`<mod>_probes/<N>` (published together by `pulse-fm publish`). The served versions follow each
encoder's config.pbtxt version policy (latest K, or a pinned list) as Triton would.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulsefm import contract as C
from pulsefm.preprocess import PreprocessSpec, spec_for
from pulsefm.records import Modality


class UnknownModel(LookupError):
    """No such modality or version in the repository."""


@dataclass(frozen=True)
class ModelVersion:
    modality: str
    version: int
    encoder_dir: Path
    encoder_card: dict[str, Any]
    probes_dir: Path | None = None
    probes_card: dict[str, Any] | None = field(default=None)

    @property
    def spec(self) -> PreprocessSpec:
        return spec_for(self.modality)

    @property
    def preprocess_version(self) -> str:
        return str(self.encoder_card["preprocess_version"])

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return list(self.probes_card["outputs"]) if self.probes_card else []

    @property
    def encoder_sha256(self) -> str:
        return str(self.encoder_card.get("sha256", ""))

    def describe(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "version": self.version,
            "preprocess_version": self.preprocess_version,
            "encoder": self.encoder_card,
            "probes": self.probes_card,
        }


def served_versions(model_dir: Path) -> list[int]:
    """Versions on disk filtered by config.pbtxt's version_policy (latest K / specific list)."""
    on_disk = C.versions_on_disk(model_dir)
    cfg_path = model_dir / "config.pbtxt"
    text = cfg_path.read_text() if cfg_path.is_file() else ""
    specific = re.search(r"specific\s*:\s*\{\s*versions\s*:\s*\[([^\]]*)\]", text)
    if specific:
        pinned = {int(v) for v in specific.group(1).replace(",", " ").split()}
        return [v for v in on_disk if v in pinned]
    latest = re.search(r"latest\s*:\s*\{\s*num_versions\s*:\s*(\d+)", text)
    return on_disk[-int(latest.group(1)) :] if latest else on_disk[-1:]


def _card(path: Path) -> dict[str, Any]:
    card = path / C.CARD_FILE
    return json.loads(card.read_text()) if card.is_file() else {}


def scan(repo: Path) -> dict[str, dict[int, ModelVersion]]:
    """modality -> version -> ModelVersion for everything the repository serves."""
    out: dict[str, dict[int, ModelVersion]] = {}
    for modality in Modality:
        enc_dir = repo / C.model_name(modality, "encoder")
        if not enc_dir.is_dir():
            continue
        probe_dir = repo / C.model_name(modality, "probes")
        probe_versions = set(served_versions(probe_dir)) if probe_dir.is_dir() else set()
        for v in served_versions(enc_dir):
            card = _card(enc_dir / str(v))
            if not card:
                continue
            has_probes = v in probe_versions
            out.setdefault(str(modality), {})[v] = ModelVersion(
                modality=str(modality),
                version=v,
                encoder_dir=enc_dir / str(v),
                encoder_card=card,
                probes_dir=probe_dir / str(v) if has_probes else None,
                probes_card=_card(probe_dir / str(v)) if has_probes else None,
            )
    return out


class Registry:
    """The current view of the repository; `reload()` swaps it in one assignment."""

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo)
        self.models: dict[str, dict[int, ModelVersion]] = {}

    def reload(self) -> dict[str, dict[int, ModelVersion]]:
        if not self.repo.is_dir():
            raise FileNotFoundError(
                f"{self.repo}: model repository not found (run `make model` or publish one)"
            )
        new = scan(self.repo)
        self.models = new
        return new

    def resolve(self, modality: str, version: int | None = None) -> ModelVersion:
        versions = self.models.get(str(modality))
        if not versions:
            raise UnknownModel(f"no {modality} model in the repository")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise UnknownModel(f"{modality} version {version} is not served; served: {sorted(versions)}")
        return versions[version]

    def all(self) -> list[ModelVersion]:
        return [mv for versions in self.models.values() for mv in versions.values()]
