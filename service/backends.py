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
from service.registry import ModelVersion


class BackendUnavailable(RuntimeError):
    """The inference server cannot be reached or refused the call."""


class Backend(Protocol):
    name: str
    max_batch: int

    async def load(self, models: list[ModelVersion]) -> None: ...
    async def health(self) -> bool: ...
    async def embed(self, mv: ModelVersion, x: np.ndarray) -> np.ndarray: ...
    async def predict(self, mv: ModelVersion, emb: np.ndarray) -> np.ndarray: ...
    async def close(self) -> None: ...


RETIRE_AFTER_S = 120.0  # sessions of versions no longer served stay this long for in-flight requests


class OrtBackend:
    """onnxruntime sessions per (model, version), run on a small thread pool (ORT releases the GIL)."""

    name = "onnxruntime"

    def __init__(self, threads: int = 0, workers: int = 2, max_batch: int = C.MAX_BATCH_SIZE) -> None:
        self.threads, self.max_batch = threads, max_batch
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ort")
        self.sessions: dict[tuple[str, int], Any] = {}
        self.retired: dict[tuple[str, int], float] = {}

    def _session(self, path: Any) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        return ort.InferenceSession(str(path / C.MODEL_FILE), opts, providers=["CPUExecutionProvider"])

    async def load(self, models: list[ModelVersion]) -> None:
        loop = asyncio.get_running_loop()
        wanted: set[tuple[str, int]] = set()
        for mv in models:
            for kind, path in (("encoder", mv.encoder_dir), ("probes", mv.probes_dir)):
                if path is None:
                    continue
                key = (C.model_name(mv.modality, kind), mv.version)
                wanted.add(key)
                if key not in self.sessions:
                    self.sessions[key] = await loop.run_in_executor(self.pool, self._session, path)
                self.retired.pop(key, None)
        now = time.monotonic()
        for key in list(self.sessions):
            if key not in wanted:
                self.retired.setdefault(key, now)
                if now - self.retired[key] > RETIRE_AFTER_S:
                    del self.sessions[key], self.retired[key]

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

    async def load(self, models: list[ModelVersion]) -> None:
        """Ask Triton to (re)load each model; harmless when it already serves them (non-explicit mode)."""
        names = {
            C.model_name(mv.modality, k)
            for mv in models
            for k in ("encoder", "probes")
            if k == "encoder" or mv.probes_dir
        }
        for name in sorted(names):
            try:
                await self.client.load_model(name)
            except Exception as exc:  # tritonclient raises its own InferenceServerException
                if "explicit" not in str(exc).lower() and "polling" not in str(exc).lower():
                    raise BackendUnavailable(f"triton load {name}: {exc}") from exc

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

    async def load(self, models: list[ModelVersion]) -> None:
        return None

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
