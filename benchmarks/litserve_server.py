"""The same model served by LitServe 0.2.19 (Lightning AI's serving framework), as its docs show:
a LitAPI that decodes the JSON body, runs the training preprocessing, batches (up to 64, 2 ms) and
runs the encoder with onnxruntime. benchmarks/serving.py measures the gateway against it on the
same JSON bodies (LitServe takes JSON or forms, not a raw .npy body).

LitServe pins its own FastAPI, so it runs in a separate environment (`make bench-litserve` makes
.venv-litserve); this file imports only numpy, onnxruntime, litserve and the project's preprocessing.

    .venv-litserve/bin/python -m benchmarks.litserve_server \
        --model model_repository/ppg_encoder/2/model.onnx --port 8091
"""

from __future__ import annotations

import argparse
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort

from pulsefm import contract as C
from pulsefm.preprocess import spec_for
from service.signals import preprocess


class EmbedAPI(ls.LitAPI):
    def __init__(self, model_path: str, modality: str) -> None:
        super().__init__(max_batch_size=64, batch_timeout=0.002, api_path="/v1/embed")
        self.model_path, self.window_spec = model_path, spec_for(modality)

    def setup(self, device: str) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.model_path, opts, providers=["CPUExecutionProvider"])

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # unannotated: LitServe passes the JSON body
        raw = np.asarray(request["segments"], dtype=np.float32)
        return preprocess(raw, float(request["fs"]), self.window_spec).data

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {C.ENCODER_INPUT: x})[0])

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output[:, None, :])

    def encode_response(self, emb: np.ndarray) -> dict[str, Any]:
        return {"embeddings": emb.tolist()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an encoder's model.onnx")
    p.add_argument("--modality", default="ppg")
    p.add_argument("--port", type=int, default=8091)
    args = p.parse_args()
    server = ls.LitServer(EmbedAPI(args.model, args.modality), accelerator="cpu", timeout=60)
    server.run(port=args.port, host="127.0.0.1", log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
