"""A table's package: the ONNX graph takes the raw columns, and the registered pyfunc takes raw rows."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import torch

from mlpipe.contracts import table
from mlpipe.contracts.drift import TableProfile
from mlpipe.ml.model import load_checkpoint
from tests.conftest import MODEL_NAME


@pytest.fixture(scope="module")
def project(built_table_project: Path) -> Path:
    return built_table_project


def session(project: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(
        (project / "models/package/model.onnx").read_bytes(), providers=["CPUExecutionProvider"]
    )


def test_the_graph_takes_one_raw_input_per_column(project: Path) -> None:
    schema = table.read_schema(project / "data/prepared")
    graph = onnx.load(project / "models/package/model.onnx").graph
    inputs = {i.name: onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type) for i in graph.input}
    assert list(inputs) == list(schema.names)
    assert inputs == {c.name: "FLOAT" if c.is_number else "STRING" for c in schema.columns}
    assert [o.name for o in graph.output] == ["probabilities"]
    manifest = json.loads((project / "models/package/package.json").read_text())
    assert manifest["input"]["kind"] == "table"
    assert [c["name"] for c in manifest["input"]["columns"]] == list(schema.names)


def test_the_graph_serves_gaps_and_unseen_levels_as_training_preprocesses_them(project: Path) -> None:
    schema = table.read_schema(project / "data/prepared")
    checkpoint = load_checkpoint(project / "models/model.pt")
    test = table.read_split("test", project / "data/prepared").subset(np.arange(6))
    features = {name: values.copy() for name, values in test.features.items()}
    for column in schema.columns:  # a gap in every number, an unseen level in every category
        features[column.name][::2] = np.nan if column.is_number else None
        if not column.is_number:
            features[column.name][1::2] = "a level never seen"
    rows = table.Table(features, test.labels, test.classes)
    served = session(project).run(["probabilities"], table.model_inputs(schema.columns, rows.features))[0]
    pre = checkpoint.preprocessing
    numbers, codes = pre.encode(rows)
    assert (codes[1::2] == -1).all()
    with torch.no_grad():
        trained = torch.softmax(
            checkpoint.build()(pre.features(torch.tensor(numbers), torch.tensor(codes))), 1
        )
    np.testing.assert_allclose(served, trained.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def registered(project: Path) -> mlflow.pyfunc.PyFuncModel:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns.db'}")
    try:
        return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@candidate")
    finally:
        mlflow.set_tracking_uri(previous)


def test_the_registered_pyfunc_predicts_raw_rows_as_evaluate_did(
    project: Path, registered: mlflow.pyfunc.PyFuncModel
) -> None:
    rows = pd.read_csv(project / "data/prepared/test.csv").drop(columns=["species"])
    predicted = registered.predict(rows)
    evaluated = pd.read_csv(project / "reports/predictions.csv")["predicted"]
    assert predicted["label"].tolist() == evaluated.tolist()
    assert registered.metadata.signature.inputs.input_names() == list(rows.columns)


def test_the_registered_pyfunc_takes_gaps_as_pandas_spells_them(
    project: Path, registered: mlflow.pyfunc.PyFuncModel
) -> None:
    rows = pd.read_csv(project / "data/prepared/test.csv").drop(columns=["species"]).head(4)
    rows.iloc[0, :] = None  # a row of gaps only
    rows.loc[1, "sex"] = np.nan
    predicted = registered.predict(rows)
    schema = table.read_schema(project / "data/prepared")
    direct = session(project).run(["probabilities"], table.model_inputs(schema.columns, rows))[0]
    assert predicted["label"].tolist() == [schema.classes[i] for i in direct.argmax(1)]
    np.testing.assert_allclose(predicted[[f"probability({c})" for c in schema.classes]].to_numpy(), direct)


def test_the_profile_holds_every_columns_training_distribution(project: Path) -> None:
    raw = json.loads((project / "models/package/profile.json").read_text())
    profile = TableProfile.from_json(raw)
    train = table.read_split("train", project / "data/prepared")
    assert [c.name for c in profile.columns] == list(train.features)
    assert all(sum(c.counts) == len(train) for c in profile.columns)
