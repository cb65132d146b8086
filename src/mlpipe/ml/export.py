"""ONNX export of a checkpoint as the served model, and its check against PyTorch.

An image model's graph takes raw pixels [N, H, W] (grayscale) or [N, H, W, 3] (RGB, channels
last) in the data's own dtype (mlpipe.contracts.manifest.INPUT_DTYPE) and returns class
probabilities [N, C]; the cast, the normalisation and the move of the channels before the rows
happen inside it, so every consumer (the server, MLflow's pyfunc, ONNX Runtime) feeds it the
pixels as the prepared arrays hold them.

A table model's graph takes one input per column, named after it: float32 [N] for a number (NaN
where missing), text [N] for a category (mlpipe.contracts.table.model_inputs), and returns class
probabilities [N, C]. Everything `TablePreprocessing` does happens inside it: the levels of each
category become codes (ONNX-ML's LabelEncoder, -1 for a level not seen in training), then the
imputation, scaling and one-hot encoding are the same PyTorch code that training ran.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from mlpipe.contracts.manifest import INPUT_DTYPE, INPUT_NAME, OUTPUT_NAME
from mlpipe.contracts.preprocessing import Preprocessing, TablePreprocessing
from mlpipe.contracts.preprocessing import model_inputs as preprocessed
from mlpipe.contracts.table import Column, Table, model_inputs
from mlpipe.core.errors import ArtifactError
from mlpipe.ml.model import Checkpoint

PIXEL_DTYPE = getattr(torch, INPUT_DTYPE)
ML_OPSET = 3  # the ai.onnx.ml opset of a table model's LabelEncoders (string keys, int64 values)


class ServedModel(nn.Module):
    """Raw pixels [N, H, W] or [N, H, W, C] (INPUT_DTYPE) -> class probabilities [N, C],
    preprocessing included."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.network = network
        self.preprocessing = preprocessing

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        normalised = self.preprocessing.normalise(pixels.to(torch.float32))
        if self.preprocessing.channels == 1:
            inputs = normalised.unsqueeze(1)
        else:
            inputs = normalised.permute(0, 3, 1, 2)
        return torch.softmax(self.network(inputs), dim=1)


class ServedTable(nn.Module):
    """One tensor [N] per column (float32 for a number, int64 level codes for a category) ->
    class probabilities [N, C], preprocessing included."""

    def __init__(self, network: nn.Module, preprocessing: TablePreprocessing) -> None:
        super().__init__()
        self.network = network
        self.preprocessing = preprocessing

    def forward(self, *columns: torch.Tensor) -> torch.Tensor:
        kinds = [column.is_number for column in self.preprocessing.columns]
        numbers = [values for values, number in zip(columns, kinds, strict=True) if number]
        codes = [values for values, number in zip(columns, kinds, strict=True) if not number]
        empty = columns[0].new_zeros((columns[0].shape[0], 0))
        features = self.preprocessing.features(
            torch.stack(numbers, dim=1) if numbers else empty.float(),
            torch.stack(codes, dim=1) if codes else empty.long(),
        )
        return torch.softmax(self.network(features), dim=1)


def code_input(column: Column) -> str:
    """The name of a category's codes between the LabelEncoder and the exported network."""
    return f"{column.name}.code"


def _export(
    module: nn.Module, examples: tuple[torch.Tensor, ...], names: list[str], opset: int, varargs: bool = False
) -> onnx.ModelProto:
    """``module`` as an ONNX model with a dynamic batch dimension, free of where the code lives;
    ``varargs``: its forward takes ``*examples``."""
    batch = torch.export.Dim("batch", min=1, max=65_536)
    shapes = tuple({0: batch} for _ in examples)
    # The exporter narrates its steps on stdout and warns about torchvision ops this model
    # never uses (torch resets its loggers on import, so this cannot live in the CLI setup).
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # A table's column inputs share the one batch dimension, which the exporter notes.
        warnings.filterwarnings("ignore", message="# The axis name: batch will not be used")
        program = torch.onnx.export(
            module,
            examples,
            dynamo=True,
            opset_version=opset,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(shapes,) if varargs else shapes,
            verbose=False,
        )
    assert program is not None  # the dynamo exporter always returns one
    model = program.model_proto
    # Per-node provenance (source stack traces with absolute paths, FX node names) would make
    # the bytes depend on where the repository is checked out; the graph does not need it.
    for node in model.graph.node:
        del node.metadata_props[:]
    return model


def export_onnx(checkpoint: Checkpoint, opset: int) -> bytes:
    """Export with a dynamic batch dimension; the bytes depend only on the weights, not on
    where the code lives."""
    if isinstance(checkpoint.preprocessing, TablePreprocessing):
        return _export_table(checkpoint, checkpoint.preprocessing, opset).SerializeToString()
    served = ServedModel(checkpoint.build(), checkpoint.preprocessing).eval()
    example = torch.zeros((2, *checkpoint.input_shape), dtype=PIXEL_DTYPE)
    return _export(served, (example,), [INPUT_NAME], opset).SerializeToString()


def _export_table(checkpoint: Checkpoint, preprocessing: TablePreprocessing, opset: int) -> onnx.ModelProto:
    from onnx import TensorProto, compose, helper

    served = ServedTable(checkpoint.build(), preprocessing).eval()
    columns = preprocessing.columns
    examples = tuple(
        torch.zeros(2) if column.is_number else torch.zeros(2, dtype=torch.int64) for column in columns
    )
    names = [column.name if column.is_number else code_input(column) for column in columns]
    network = _export(served, examples, names, opset, varargs=True)
    categories = preprocessing.categories
    if not categories:
        return network
    # Level -> code, one LabelEncoder per category, in front of the network's code inputs.
    encoders = helper.make_graph(
        [
            helper.make_node(
                "LabelEncoder",
                [column.name],
                [code_input(column)],
                domain="ai.onnx.ml",
                keys_strings=list(column.levels),
                values_int64s=list(range(len(column.levels))),
                default_int64=-1,
            )
            for column in categories
        ],
        "levels",
        [helper.make_tensor_value_info(column.name, TensorProto.STRING, ["batch"]) for column in categories],
        [
            helper.make_tensor_value_info(code_input(column), TensorProto.INT64, ["batch"])
            for column in categories
        ],
    )
    front = helper.make_model(
        encoders,
        opset_imports=[*network.opset_import, helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        ir_version=network.ir_version,
    )
    merged = compose.merge_models(
        front, network, io_map=[(code_input(column), code_input(column)) for column in categories]
    )
    versions = {entry.domain: entry.version for entry in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(domain, versions[domain]) for domain in sorted(versions))
    # The inputs in the columns' order, whatever order merging left them in.
    order = {column.name: i for i, column in enumerate(columns)}
    inputs = sorted(merged.graph.input, key=lambda value: order[value.name])
    del merged.graph.input[:]
    merged.graph.input.extend(inputs)
    return merged


def verify_onnx(onnx_bytes: bytes, checkpoint: Checkpoint, examples: np.ndarray | Table) -> np.ndarray:
    """Run the exported model with ONNX Runtime on raw ``examples`` (images, or a table's rows)
    and check it agrees with PyTorch; return its output."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    preprocessing = checkpoint.preprocessing
    if isinstance(examples, Table) and isinstance(preprocessing, TablePreprocessing):
        exported = session.run([OUTPUT_NAME], model_inputs(preprocessing.columns, examples.features))[0]
        with torch.no_grad():
            reference = torch.softmax(
                checkpoint.build()(preprocessed(examples, preprocessing)), dim=1
            ).numpy()
    elif isinstance(examples, np.ndarray) and isinstance(preprocessing, Preprocessing):
        pixels = np.ascontiguousarray(examples, dtype=INPUT_DTYPE)
        exported = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
        with torch.no_grad():
            reference = ServedModel(checkpoint.build(), preprocessing)(torch.from_numpy(pixels)).numpy()
    else:
        raise TypeError(f"a {type(preprocessing).__name__} model does not take {type(examples).__name__}")
    if (
        not np.allclose(exported, reference, atol=1e-5)
        or not (exported.argmax(1) == reference.argmax(1)).all()
    ):
        raise ArtifactError("the exported ONNX model disagrees with the PyTorch model; not packaging it")
    return exported
