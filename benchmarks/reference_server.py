"""The server a user would write by hand: Starlette + orjson + onnxruntime + a micro-batcher.

It does the gateway's work minus its guarantees (no admission, no windows, no per-window checks,
no cache, no metrics): decode (.npy or JSON), the training preprocessing, batch, run the encoder,
answer. benchmarks/serving.py measures the gateway against it.

    python -m benchmarks.reference_server --model model_repository/ppg_encoder/2/model.onnx --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pulsefm import contract as C
from pulsefm.preprocess import spec_for
from service.signals import preprocess

MAX_BATCH, MAX_WAIT_S = 64, 0.002


def make_app(model_path: str, modality: str) -> Starlette:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    spec = spec_for(modality)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {C.ENCODER_INPUT: x})[0])

    queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            deadline = loop.time() + MAX_WAIT_S
            while len(items) < MAX_BATCH and (left := deadline - loop.time()) > 0:
                try:
                    items.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            x = np.concatenate([a for a, _ in items])
            out = await loop.run_in_executor(None, run, x)
            start = 0
            for a, fut in items:
                fut.set_result(out[start : start + len(a)])
                start += len(a)

    async def embed(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-type") == "application/x-npy":
            raw = np.load(io.BytesIO(body))
            fs = float(request.query_params["fs"])
        else:
            doc = orjson.loads(body)
            raw, fs = np.asarray(doc["segments"], dtype=np.float32), float(doc["fs"])
        x = preprocess(raw.astype(np.float32), fs, spec).data
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await queue.put((x, fut))
        emb = await fut
        if "application/x-npy" in request.headers.get("accept", ""):
            buf = io.BytesIO()
            np.save(buf, emb)
            return Response(buf.getvalue(), media_type="application/x-npy")
        return Response(orjson.dumps({"embeddings": emb}, option=orjson.OPT_SERIALIZE_NUMPY))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher())
        yield
        task.cancel()

    return Starlette(routes=[Route("/v1/embed", embed, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an encoder's model.onnx")
    p.add_argument("--modality", default="ppg")
    p.add_argument("--port", type=int, default=8090)
    args = p.parse_args()
    app = make_app(args.model, args.modality)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", http="httptools")


if __name__ == "__main__":
    main()
