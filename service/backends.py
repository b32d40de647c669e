"""Inference backends behind one small contract: health, max batch, embed, predict, load.

    OrtBackend     onnxruntime in-process (the embedded default: no other service needed)
    TritonBackend  a Triton server through tritonclient (gRPC or HTTP, binary tensors)
    FakeBackend    deterministic arithmetic, for unit tests only

Tensor names and shapes come from `pulsefm.contract`, as in the exporter and config.pbtxt.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from pulsefm import contract as C
from service.errors import BackendUnavailable
from service.registry import LoadFailure, ModelVersion

__all__ = ["Backend", "BackendUnavailable", "FakeBackend", "OrtBackend", "TritonBackend"]


class Backend(Protocol):
    name: str
    max_batch: int

    async def load(self, models: list[ModelVersion]) -> list[LoadFailure]:
        """Load what is not loaded yet; a version that fails is returned, the others still load."""
        ...

    async def health(self) -> bool: ...
    async def embed(self, mv: ModelVersion, x: np.ndarray) -> np.ndarray: ...
    async def predict(self, mv: ModelVersion, emb: np.ndarray) -> np.ndarray: ...
    async def close(self) -> None: ...


RETIRE_AFTER_S = 120.0  # sessions of versions no longer served stay this long for in-flight requests


class ContractMismatch(ValueError):
    """A model file whose inputs/outputs are not the serving contract's."""


def check_contract(sess: Any, kind: str, mv: ModelVersion) -> None:
    """The session's tensor names and fixed dims must be `pulsefm.contract`'s (and K = the card's outputs)."""
    if kind == "encoder":
        want_in = (C.ENCODER_INPUT, C.encoder_contract(mv.modality).input.dims)
        want_out = (C.ENCODER_OUTPUT, (C.EMBED_DIM,))
    else:
        want_in = (C.PROBES_INPUT, (C.EMBED_DIM,))
        want_out = (C.PROBES_OUTPUT, (len(mv.outputs),))
    for got, (name, dims) in ((sess.get_inputs(), want_in), (sess.get_outputs(), want_out)):
        if len(got) != 1 or got[0].name != name or tuple(got[0].shape[1:]) != tuple(dims):
            seen = [(t.name, list(t.shape)) for t in got]
            raise ContractMismatch(
                f"{kind} {mv.modality} v{mv.version}: expected {name} [B, {dims}], got {seen}"
            )


class OrtBackend:
    """onnxruntime sessions per (model, version), run on a small thread pool (ORT releases the GIL)."""

    name = "onnxruntime"

    def __init__(
        self, threads: int = 0, workers: int = 2, max_batch: int = C.MAX_BATCH_SIZE, spinning: bool = False
    ) -> None:
        self.threads, self.max_batch, self.spinning = threads, max_batch, spinning
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ort")
        self.sessions: dict[tuple[str, int], Any] = {}
        self.loaded_sha: dict[tuple[str, int], str] = {}
        self.retired: dict[tuple[str, int], float] = {}

    def _session(self, path: Any, kind: str, mv: ModelVersion) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if not self.spinning:  # idle intra-op threads would otherwise spin, taking a core from the gateway
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path / C.MODEL_FILE), opts, providers=["CPUExecutionProvider"])
        check_contract(sess, kind, mv)
        return sess

    async def load(self, models: list[ModelVersion]) -> list[LoadFailure]:
        loop = asyncio.get_running_loop()
        wanted: set[tuple[str, int]] = set()
        failed: list[LoadFailure] = []
        for mv in models:
            for kind, path, card in (
                ("encoder", mv.encoder_dir, mv.encoder_card),
                ("probes", mv.probes_dir, mv.probes_card),
            ):
                if path is None:
                    continue
                key = (C.model_name(mv.modality, kind), mv.version)
                sha = str((card or {}).get("sha256", ""))
                if key not in self.sessions or self.loaded_sha.get(key) != sha:
                    try:
                        self.sessions[key] = await loop.run_in_executor(
                            self.pool, self._session, path, kind, mv
                        )
                        self.loaded_sha[key] = sha
                    except Exception as exc:  # onnxruntime raises its own types for a bad file
                        reason = "contract" if isinstance(exc, ContractMismatch) else "load"
                        failed.append(LoadFailure(mv.modality, mv.version, kind, reason, str(exc)[:300]))
                        continue
                wanted.add(key)
                self.retired.pop(key, None)
        now = time.monotonic()
        for key in list(self.sessions):
            if key not in wanted:
                self.retired.setdefault(key, now)
                if now - self.retired[key] > RETIRE_AFTER_S:
                    del self.sessions[key], self.retired[key]
                    self.loaded_sha.pop(key, None)
        return failed

    async def warmup(self, models: list[ModelVersion]) -> None:
        for mv in models:
            x = np.zeros((1, *C.encoder_contract(mv.modality).input.dims), dtype=np.float32)
            emb = await self.embed(mv, x)
            if mv.probes_dir is not None:
                await self.predict(mv, emb)

    async def health(self) -> bool:
        return bool(self.sessions)

    async def _run(self, model: str, version: int, name_in: str, name_out: str, x: np.ndarray) -> np.ndarray:
        sess = self.sessions.get((model, version))
        if sess is None:
            raise BackendUnavailable(f"{model} version {version} is not loaded")
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self.pool, lambda: sess.run([name_out], {name_in: x})[0])
        return np.asarray(out, dtype=np.float32)

    async def embed(self, mv: ModelVersion, x: np.ndarray) -> np.ndarray:
        name = C.model_name(mv.modality, "encoder")
        return await self._run(name, mv.version, C.ENCODER_INPUT, C.ENCODER_OUTPUT, x)

    async def predict(self, mv: ModelVersion, emb: np.ndarray) -> np.ndarray:
        name = C.model_name(mv.modality, "probes")
        return await self._run(name, mv.version, C.PROBES_INPUT, C.PROBES_OUTPUT, emb)

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.sessions.clear()


class TritonBackend:
    """A Triton server via tritonclient's asyncio clients, binary tensors."""

    name = "triton"

    def __init__(self, url: str, protocol: str = "grpc", max_batch: int = C.MAX_BATCH_SIZE) -> None:
        self.url, self.protocol, self.max_batch = url, protocol, max_batch
        if protocol == "grpc":
            import tritonclient.grpc.aio as client_mod
        else:
            import tritonclient.http.aio as client_mod
        self.mod: Any = client_mod
        self.client: Any = client_mod.InferenceServerClient(url)

    async def load(self, models: list[ModelVersion]) -> list[LoadFailure]:
        """Ask Triton to (re)load each model; harmless when it already serves them (non-explicit mode).
        Triton loads a model's versions together: a model it refuses fails all its versions here."""
        if not await self.health():
            raise BackendUnavailable(f"triton at {self.url} is not ready")
        failed: list[LoadFailure] = []
        for kind in ("encoder", "probes"):
            for modality in sorted({mv.modality for mv in models}):
                name = C.model_name(modality, kind)
                versions = [
                    mv for mv in models if mv.modality == modality and (kind == "encoder" or mv.probes_dir)
                ]
                if not versions:
                    continue
                try:
                    await self.client.load_model(name)
                except Exception as exc:  # tritonclient raises its own InferenceServerException
                    text = str(exc).lower()
                    if "explicit" in text or "polling" in text:
                        continue
                    if "connect" in text or "unavailable" in text:
                        raise BackendUnavailable(f"triton load {name}: {exc}") from exc
                    failed += [
                        LoadFailure(modality, mv.version, kind, "load", str(exc)[:300]) for mv in versions
                    ]
        return failed

    async def warmup(self, models: list[ModelVersion]) -> None:
        for mv in models:
            x = np.zeros((1, *C.encoder_contract(mv.modality).input.dims), dtype=np.float32)
            await self.embed(mv, x)

    async def health(self) -> bool:
        try:
            return bool(await self.client.is_server_ready())
        except Exception:
            return False

    async def _infer(
        self, model: str, version: int, name_in: str, name_out: str, x: np.ndarray
    ) -> np.ndarray:
        inp = self.mod.InferInput(name_in, list(x.shape), "FP32")
        if self.protocol == "grpc":
            inp.set_data_from_numpy(x)
            outputs = [self.mod.InferRequestedOutput(name_out)]
        else:
            inp.set_data_from_numpy(x, binary_data=True)
            outputs = [self.mod.InferRequestedOutput(name_out, binary_data=True)]
        try:
            res = await self.client.infer(model, [inp], model_version=str(version), outputs=outputs)
        except Exception as exc:
            raise BackendUnavailable(f"triton {model} v{version}: {exc}") from exc
        return np.asarray(res.as_numpy(name_out), dtype=np.float32)

    async def embed(self, mv: ModelVersion, x: np.ndarray) -> np.ndarray:
        name = C.model_name(mv.modality, "encoder")
        return await self._infer(name, mv.version, C.ENCODER_INPUT, C.ENCODER_OUTPUT, x)

    async def predict(self, mv: ModelVersion, emb: np.ndarray) -> np.ndarray:
        name = C.model_name(mv.modality, "probes")
        return await self._infer(name, mv.version, C.PROBES_INPUT, C.PROBES_OUTPUT, emb)

    async def close(self) -> None:
        await self.client.close()


class FakeBackend:
    """Unit tests only: embedding = per-channel means tiled to 256; probes = sums. Counts calls."""

    name = "fake"

    def __init__(self, max_batch: int = 8, delay_s: float = 0.0, healthy: bool = True) -> None:
        self.max_batch, self.delay_s, self.healthy = max_batch, delay_s, healthy
        self.batches: list[int] = []

    async def load(self, models: list[ModelVersion]) -> list[LoadFailure]:
        return []

    async def warmup(self, models: list[ModelVersion]) -> None:
        return None

    async def health(self) -> bool:
        return self.healthy

    async def embed(self, mv: ModelVersion, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        m = x.astype(np.float64).mean(axis=2) + x.std(axis=2) + mv.version
        reps = -(-C.EMBED_DIM // m.shape[1])
        return np.tile(m, (1, reps))[:, : C.EMBED_DIM].astype(np.float32)

    async def predict(self, mv: ModelVersion, emb: np.ndarray) -> np.ndarray:
        k = max(1, len(mv.outputs))
        return np.repeat(emb.sum(axis=1, keepdims=True), k, axis=1).astype(np.float32)

    async def close(self) -> None:
        return None
