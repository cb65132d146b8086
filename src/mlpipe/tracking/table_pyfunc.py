"""A table model as MLflow's pyfunc: a DataFrame of raw rows in, a DataFrame of predictions out.

The registered artifact is the package itself (package.json and the same model.onnx the server
runs). `predict` feeds each column to the ONNX model as the server does
(mlpipe.contracts.table.model_inputs: missing values as pandas reads them, None or NaN, become
the model's missing value) and answers one row per input row: the predicted ``label`` and one
``probability(<class>)`` column per class. It needs NumPy, pandas and ONNX Runtime only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from mlpipe.contracts.manifest import MANIFEST_FILE, PackageManifest, TableInput
from mlpipe.contracts.table import model_inputs
from mlpipe.core.tables import read_json

PACKAGE_ARTIFACT = "package"
LABEL_COLUMN = "label"


def probability_column(label: str) -> str:
    """The name of a class's probability in the predictions."""
    return f"probability({label})"


class TableModel(PythonModel):
    """A table package's ONNX model behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        import onnxruntime

        package = Path(context.artifacts[PACKAGE_ARTIFACT])
        manifest = PackageManifest.from_json(
            read_json(package / MANIFEST_FILE, "not a package", "rebuild it")
        )
        if not isinstance(manifest.input, TableInput):
            raise TypeError(f"{package}: not a table model's package")
        self.columns = manifest.input.columns
        self.labels = manifest.labels
        self.output = manifest.output_name
        model = (package / manifest.model_file).read_bytes()
        self.session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        missing = [column.name for column in self.columns if column.name not in frame.columns]
        if missing:
            raise ValueError(
                f"the rows have no column {missing[0]!r}; the model takes {[c.name for c in self.columns]}"
            )
        features = {
            column.name: frame[column.name].astype(object).where(frame[column.name].notna(), None).to_numpy()
            for column in self.columns
        }
        probabilities = self.session.run([self.output], model_inputs(self.columns, features))[0]
        labels = np.asarray(self.labels, dtype=object)[probabilities.argmax(axis=1)]
        result = {LABEL_COLUMN: labels} | {
            probability_column(label): probabilities[:, i] for i, label in enumerate(self.labels)
        }
        return pd.DataFrame(result, index=frame.index)
