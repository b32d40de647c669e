"""What the model repository holds: served versions per modality, with their cards.

A "model version" in the API is one integer per modality: `<mod>_encoder/<N>` and, when present,
`<mod>_probes/<N>` (published together by `pulse-fm publish`). The served versions follow each
encoder's config.pbtxt version policy (latest K, or a pinned list) as Triton would.

A version that cannot be trusted is never served and never takes others down: an unreadable
card, or a model.onnx whose sha256 is not the card's (truncated, changed in place), makes that
version a `LoadFailure` (reported by /v1/models, logged, counted); the rest of the repository is
served as usual. The backend adds its own failures (file that does not load, contract mismatch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulsefm import contract as C
from pulsefm.plausibility import Plausibility
from pulsefm.preprocess import PreprocessSpec, spec_for
from pulsefm.records import Modality
from service import rollout
from service.errors import Gone, UnknownModel


@dataclass(frozen=True)
class LoadFailure:
    """A version on disk that is not served, and why."""

    modality: str
    version: int
    kind: str  # encoder | probes
    reason: str  # short machine label: card, checksum, load, contract, warmup
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "version": self.version,
            "kind": self.kind,
            "reason": self.reason,
            "detail": self.detail,
        }


log = logging.getLogger("pulsefm.gateway")


class BadVersion(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class ModelVersion:
    modality: str
    version: int
    encoder_dir: Path
    encoder_card: dict[str, Any]
    probes_dir: Path | None = None
    probes_card: dict[str, Any] | None = field(default=None)
    plausibility: Plausibility | None = None  # training ranges + OOD model (plausibility.json)
    sunset: float | None = None  # retiring: answered until this time (Unix s), then 410 Gone

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


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so that polling the repository is cheap."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _card(path: Path) -> dict[str, Any]:
    """The version's card, its model file checked against the card's sha256."""
    card_path = path / C.CARD_FILE
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise BadVersion("card", f"{card_path}: unreadable card ({exc})") from None
    if not isinstance(card, dict) or not isinstance(card.get("sha256"), str):
        raise BadVersion("card", f"{card_path}: card without a sha256")
    model = path / C.MODEL_FILE
    try:
        digest = file_sha256(model)
    except OSError as exc:
        raise BadVersion("checksum", f"{model}: cannot read ({exc})") from None
    if digest != card["sha256"]:
        raise BadVersion(
            "checksum",
            f"{model}: sha256 {digest[:12]} is not the card's {card['sha256'][:12]} (changed or truncated)",
        )
    return card


_PLAUSIBILITY_CACHE: dict[tuple[str, str], Plausibility] = {}


def _plausibility(probes_dir: Path, card: dict[str, Any]) -> Plausibility | None:
    """The probes' plausibility.json if the card names one, checked against the card's sha256."""
    entry = card.get("plausibility")
    if not isinstance(entry, dict):
        return None
    path = probes_dir / C.PLAUSIBILITY_FILE
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise BadVersion("plausibility", f"{path}: cannot read ({exc})") from None
    if digest != entry.get("sha256"):
        raise BadVersion("plausibility", f"{path}: sha256 {digest[:12]} is not the card's")
    key = (str(path), digest)
    if key not in _PLAUSIBILITY_CACHE:
        try:
            _PLAUSIBILITY_CACHE[key] = Plausibility.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadVersion("plausibility", f"{path}: unreadable ({exc})") from None
    return _PLAUSIBILITY_CACHE[key]


def _version(
    modality: str, v: int, enc_dir: Path, probe_dir: Path, probe_versions: set[int], sunset: float | None
) -> ModelVersion:
    kind = "encoder"
    try:
        card = _card(enc_dir / str(v))
        kind = "probes"
        has_probes = v in probe_versions and (probe_dir / str(v) / C.CARD_FILE).is_file()
        probes_card = _card(probe_dir / str(v)) if has_probes else None
        plausibility = _plausibility(probe_dir / str(v), probes_card) if probes_card else None
    except BadVersion as exc:
        raise LoadFailureError(LoadFailure(modality, v, kind, exc.reason, str(exc))) from None
    return ModelVersion(
        modality=modality,
        version=v,
        encoder_dir=enc_dir / str(v),
        encoder_card=card,
        probes_dir=probe_dir / str(v) if has_probes else None,
        probes_card=probes_card,
        plausibility=plausibility,
        sunset=sunset,
    )


class LoadFailureError(Exception):
    def __init__(self, failure: LoadFailure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


@dataclass
class Scan:
    """What the repository holds: served versions, retiring ones (left the policy, inside their
    grace period: still answered, with Deprecation / Sunset headers), gone ones (past it: 410), and
    versions that fail to load."""

    models: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    retiring: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    gone: dict[str, dict[int, float]] = field(default_factory=dict)  # version -> its sunset
    failed: list[LoadFailure] = field(default_factory=list)


def scan_repo(repo: Path, grace_s: float = 0.0, now: float | None = None) -> Scan:
    """The repository by modality. A version on disk outside config.pbtxt's policy left it when
    config.pbtxt was last written (publish rewrites it): its sunset is that time + `grace_s`."""
    now = time.time() if now is None else now
    out = Scan()
    for modality in map(str, Modality):
        enc_dir = repo / C.model_name(modality, "encoder")
        if not enc_dir.is_dir():
            continue
        probe_dir = repo / C.model_name(modality, "probes")
        probe_versions = set(C.versions_on_disk(probe_dir)) if probe_dir.is_dir() else set()
        served = served_versions(enc_dir)
        config = enc_dir / "config.pbtxt"
        sunset = (config.stat().st_mtime if config.is_file() else now) + grace_s
        for v in C.versions_on_disk(enc_dir):
            if not (enc_dir / str(v) / C.CARD_FILE).is_file():
                continue  # being published: the card is written last
            if v not in served and sunset <= now:
                out.gone.setdefault(modality, {})[v] = sunset
                continue
            try:
                mv = _version(
                    modality, v, enc_dir, probe_dir, probe_versions, None if v in served else sunset
                )
            except LoadFailureError as exc:
                if v in served:
                    out.failed.append(exc.failure)
                continue
            (out.models if v in served else out.retiring).setdefault(modality, {})[v] = mv
    return out


def scan_all(repo: Path) -> tuple[dict[str, dict[int, ModelVersion]], list[LoadFailure]]:
    """modality -> version -> ModelVersion for what the repository serves, and what it cannot."""
    found = scan_repo(repo)
    return found.models, found.failed


def scan(repo: Path) -> dict[str, dict[int, ModelVersion]]:
    """modality -> version -> ModelVersion for everything the repository serves."""
    return scan_all(repo)[0]


class Registry:
    """The current view of the repository; `reload()` swaps it in one assignment."""

    def __init__(self, repo: Path, grace_s: float = 0.0) -> None:
        self.repo = Path(repo)
        self.grace_s = grace_s
        self.models: dict[str, dict[int, ModelVersion]] = {}
        self.retiring: dict[str, dict[int, ModelVersion]] = {}
        self.gone: dict[str, dict[int, float]] = {}
        self.failed: list[LoadFailure] = []
        self.rollouts: dict[str, rollout.Rollout] = {}

    def reload(self) -> dict[str, dict[int, ModelVersion]]:
        if not self.repo.is_dir():
            raise FileNotFoundError(
                f"{self.repo}: model repository not found (run `make model` or publish one)"
            )
        found = scan_repo(self.repo, self.grace_s)
        self.models, self.retiring, self.gone, self.failed = (
            found.models,
            found.retiring,
            found.gone,
            found.failed,
        )
        self.load_rollouts()
        return self.models

    def load_rollouts(self) -> None:
        try:
            self.rollouts = rollout.load(self.repo)
        except ValueError:  # a damaged rollout.json must not stop serving: newest versions, logged
            log.exception("rollout state unreadable; unpinned traffic goes to the newest versions")
            self.rollouts = {}

    def current(self, modality: str) -> int:
        """The version unpinned traffic gets outside a canary: the promoted one if still served."""
        return rollout.current_version(self.rollouts, modality, self.models[str(modality)])

    def candidate(self, modality: str, mode: str) -> ModelVersion | None:
        r = self.rollouts.get(str(modality))
        versions = self.models.get(str(modality), {})
        if r is None or r.mode != mode or r.candidate not in versions:
            return None
        return versions[r.candidate]

    def resolve(self, modality: str, version: int | None = None, client: str | None = None) -> ModelVersion:
        versions = self.models.get(str(modality))
        if not versions:
            raise UnknownModel(f"no {modality} model in the repository")
        if version is None:
            canary = self.candidate(modality, "canary")
            r = self.rollouts.get(str(modality))
            if (
                canary is not None
                and r is not None
                and client
                and rollout.bucket(str(modality), client) < r.fraction
            ):
                return canary
            return versions[self.current(modality)]
        if version in versions:
            return versions[version]
        retiring = self.retiring.get(str(modality), {}).get(version)
        sunset = retiring.sunset if retiring is not None else self.gone.get(str(modality), {}).get(version)
        if retiring is not None and sunset is not None and sunset > time.time():
            return retiring
        if sunset is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(sunset))
            raise Gone(f"{modality} version {version} was retired on {when}; served: {sorted(versions)}")
        raise UnknownModel(f"{modality} version {version} is not served; served: {sorted(versions)}")

    def all(self) -> list[ModelVersion]:
        return [mv for versions in self.models.values() for mv in versions.values()]

    def loadable(self) -> list[ModelVersion]:
        """Served and retiring versions: what the backend must hold."""
        return self.all() + [mv for versions in self.retiring.values() for mv in versions.values()]
