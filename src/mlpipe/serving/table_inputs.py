"""Turning V1 rows and V2 column tensors into a table model's checked columns, or a 400 that says
what is wrong.

A request carries rows of the package's columns (mlpipe.contracts.manifest.TableInput): V1
``{"instances": [{column: value, ...}, ...]}`` with every column in every row; V2 one input [N]
(or [N, 1]) per column, named after it: FP32, FP64, INT32 or INT64 for a number, BYTES (text)
for a category. ``null`` is a missing value, which the graph fills as training filled its gaps;
a category's level unseen in training takes the graph's unknown-level path. Every check runs
before the model sees the rows, and its message names the column: text or true/false in a
number, a number in a category, NaN or infinity, an unknown or a missing column, no row or more
than max_batch_size rows. The columns come out as prepare reads a table's (numbers float64 with
NaN, text with None where missing), ready for `mlpipe.contracts.table.model_inputs` and the
drift window.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from kserve.protocol.infer_type import InferInput, InferRequest

from mlpipe.contracts.manifest import TableInput
from mlpipe.contracts.table import Column, parse_categories
from mlpipe.serving.validation import BadInput, tensor_data

# The V2 datatypes a client may send a number column as, and a category column as.
NUMBER_DATATYPES = ("FP32", "FP64", "INT32", "INT64")
TEXT_DATATYPES = ("BYTES",)
# The model takes numbers as float32: a larger one would reach it as infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)
SHOWN_CHARACTERS = 40  # of a client's value or name in a message
JSON_KINDS = {
    bool: "true/false",
    str: "text",
    bytes: "text",
    dict: "an object",
    list: "a list",
    type(None): "null",
}
V1_FORMAT = '{"instances": [{column: value, ...}, ...]}'

Features = dict[str, np.ndarray]


def _shown(value: Any) -> str:
    """A client's value or name as JSON writes it, cut to SHOWN_CHARACTERS."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # bytes of a binary BYTES element; an int of 4,300 digits
        text = repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 1] + "…"


def _kind(value: Any) -> str:
    return JSON_KINDS.get(type(value), "a number")


def _check_rows(n: int, spec: TableInput) -> None:
    if n < 1:
        raise BadInput("batch_size", "empty batch: send at least one row")
    if n > spec.max_batch_size:
        raise BadInput(
            "batch_size", f"too many rows: {n} in one request, at most {spec.max_batch_size}; split the batch"
        )


def _check_names(found: Collection[str], spec: TableInput, where: str) -> None:
    """An unknown name, or a column missing from ``found``: a 400 naming it."""
    names = [column.name for column in spec.columns]
    unknown = [name for name in found if name not in names]
    if unknown:
        raise BadInput(
            "column", f"{where}: unknown column {_shown(unknown[0])}; this model's columns are {names}"
        )
    missing = [name for name in names if name not in found]
    if missing:
        raise BadInput(
            "column",
            f"{where}: column {missing[0]!r} is missing; send every one of {names} (null where a "
            "value is missing)",
        )


def _number(value: Any, column: Column, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(
            "not_numbers",
            f"{where}: column {column.name!r} is a number; got {_kind(value)} {_shown(value)}. Send "
            "a number, or null where the value is missing",
        )
    number = float(value) if abs(value) <= FLOAT32_MAX else math.inf  # big ints: no OverflowError
    if not abs(number) <= FLOAT32_MAX:
        raise BadInput(
            "number_values",
            f"{where}: column {column.name!r} must be a finite number of at most {FLOAT32_MAX:.3g} in "
            f"size; got {_shown(value)}. Send null where the value is missing",
        )
    return number


def _text(value: Any, column: Column, where: str) -> str | None:
    if isinstance(value, bytes):  # a binary BYTES element
        try:
            return value.decode()
        except UnicodeDecodeError as e:
            raise BadInput("not_text", f"{where}: column {column.name!r}: not UTF-8 text ({e})") from e
    if value is None or isinstance(value, str):
        return value
    raise BadInput(
        "not_text",
        f"{where}: column {column.name!r} is a category: send its level as text (such as "
        f"{_shown(column.levels[0])}), or null where it is missing; got {_kind(value)} {_shown(value)}",
    )


def _column(column: Column, values: Sequence[Any], where: str) -> np.ndarray:
    """One column's values, checked: float64 [N] with NaN, or text [N] with None where missing;
    ``where`` names the n-th value in a message (``where.format(n)``)."""
    if column.is_number:
        numbers = [_number(value, column, where.format(i)) for i, value in enumerate(values)]
        return np.asarray(numbers, dtype=np.float64)
    # As prepare reads a category: surrounding spaces dropped, NA-like text missing.
    return parse_categories(_text(value, column, where.format(i)) for i, value in enumerate(values))


def v1_rows(body: Any, spec: TableInput) -> Features:
    """The columns of a V1 body ``{"instances": [row, ...]}``, each row ``{column: value}``."""
    if not isinstance(body, dict):
        raise BadInput(
            "body",
            f"the request body must be a JSON object {V1_FORMAT} sent with Content-Type: application/json",
        )
    instances = body.get("instances")
    names = [column.name for column in spec.columns]
    if not isinstance(instances, list):
        raise BadInput("body", f'"instances" must be a list of rows, each an object of the columns {names}')
    _check_rows(len(instances), spec)
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise BadInput(
                "body",
                f"instance {index}: a row is a JSON object {{column: value, ...}}; got {_kind(instance)}",
            )
        if instance.keys() != set(names):
            _check_names(instance.keys(), spec, f"instance {index}")
    return {
        column.name: _column(column, [instance[column.name] for instance in instances], "instance {}")
        for column in spec.columns
    }


def _flat(tensor: InferInput, rows: int) -> list[Any]:
    """The values of a V2 input of shape [rows] or [rows, 1], as Python values."""
    data = tensor_data(tensor)
    try:
        values = np.asarray(data, dtype=object).ravel().tolist()
    except ValueError as e:  # ragged nested lists
        raise BadInput(
            "shape", f"input {tensor.name!r}: the data is not a list of {rows} values ({e})"
        ) from e
    if len(values) != rows:
        raise BadInput(
            "shape",
            f"input {tensor.name!r}: shape {list(tensor.shape)} needs {rows} values; got {len(values)}",
        )
    return values


def _v2_column(tensor: InferInput, column: Column, spec: TableInput) -> np.ndarray:
    datatypes = NUMBER_DATATYPES if column.is_number else TEXT_DATATYPES
    if tensor.datatype not in datatypes:
        raise BadInput(
            "datatype",
            f"input {column.name!r} (a {column.type} column) has datatype {_shown(tensor.datatype)}; "
            f"send {' or '.join(datatypes)}",
        )
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise BadInput(
            "shape", f"input {column.name!r} must have shape [N] or [N, 1], one value per row; got {shape}"
        )
    _check_rows(shape[0], spec)
    return _column(column, _flat(tensor, shape[0]), f"input {column.name!r}, row {{}}")


def v2_rows(request: InferRequest, spec: TableInput) -> Features:
    """The columns of a V2 request with one input per column, named after it."""
    tensors: dict[str, InferInput] = {}
    for tensor in request.inputs:
        if tensor.name in tensors:
            raise BadInput("column", f"input {_shown(tensor.name)} appears twice; send one input per column")
        tensors[tensor.name] = tensor
    _check_names(tensors.keys(), spec, "the request's inputs")
    features = {column.name: _v2_column(tensors[column.name], column, spec) for column in spec.columns}
    rows = {name: len(values) for name, values in features.items()}
    if len(set(rows.values())) > 1:
        raise BadInput(
            "shape", f"the inputs hold different numbers of rows, {rows}; send one value per row in each"
        )
    return features
