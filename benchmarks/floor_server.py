"""The floor of any Python model server: Starlette + uvicorn + ONNX Runtime, nothing else.

One V2-style JSON route (and a readiness route), no validation, no metrics, no logging: what
`benchmarks/serve.py` compares the real servers with. ``MLPIPE_FLOOR_MODEL`` names the ONNX file.
Run: ``uvicorn --app-dir benchmarks floor_server:app --no-access-log``.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(
    os.environ["MLPIPE_FLOOR_MODEL"], options, providers=["CPUExecutionProvider"]
)
input_name = session.get_inputs()[0].name


async def infer(request: Request) -> Response:
    tensor = orjson.loads(await request.body())["inputs"][0]
    pixels = np.asarray(tensor["data"], dtype=np.uint8).reshape(tensor["shape"])
    probabilities = session.run(None, {input_name: pixels})[0]
    output = {"name": "probabilities", "shape": list(probabilities.shape), "datatype": "FP32"}
    body = {"model_name": "floor", "outputs": [output | {"data": probabilities.ravel().tolist()}]}
    return Response(orjson.dumps(body), media_type="application/json")


async def ready(_: Request) -> Response:
    return Response(b'{"ready": true}', media_type="application/json")


app = Starlette(
    routes=[
        Route("/v2/models/floor/infer", infer, methods=["POST"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
    ]
)
