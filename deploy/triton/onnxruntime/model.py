"""A Python-based Triton backend named "onnxruntime", for CPU-only test and benchmark machines.

No package registry ships Triton's C++ onnxruntime backend, so on such machines this file
stands in for it (see docs/triton.md): config.pbtxt files that say `backend: "onnxruntime"`
load unchanged. It runs BACKEND_DIR/onnxruntime/model.py for every model, loads
<model dir>/<version>/model.onnx with onnxruntime, and when the dynamic batcher hands it several
requests, concatenates them into one session run and splits the outputs. Production uses the
official Triton image with the real onnxruntime / TensorRT backends.
"""

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("PULSEFM_TRITON_THREADS", "0"))
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in cfg["input"]]
        self.outputs = [t["name"] for t in cfg["output"]]

    def execute(self, requests):
        batches = [
            [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs] for r in requests
        ]
        sizes = [b[0].shape[0] for b in batches]
        feed = {n: np.concatenate([b[k] for b in batches]) for k, n in enumerate(self.inputs)}
        results = self.session.run(self.outputs, feed)
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(n, np.ascontiguousarray(r[start : start + size]))
                for n, r in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
