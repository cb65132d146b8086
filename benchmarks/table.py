"""Table benchmark (`make bench-table`, i.e. `python -m benchmarks.table`): the pipeline's MLP on
a table against the scikit-learn pipelines a tabular team would write instead.

Each dataset is prepared once by `prepare` (the stratified split the pipeline trains on); every
contender then learns from the same train split and is scored on the same test split:
- mlpipe: `train.run` then `evaluate.run` in this process (the stages' own code, MLflow in a
  temporary local store), on the params below (the README's "Tabular data" ones);
- scikit-learn: a ColumnTransformer (numbers: mean imputation and scaling; categories: one-hot,
  unseen levels ignored, gaps as no level: the same preprocessing) before LogisticRegression,
  and HistGradientBoostingClassifier on the same columns (gaps left to the trees, categories as
  ordinal codes marked categorical).
Seconds are the wall time to fit and score on the test split (mlpipe: the train and evaluate
stages, their tracking and report files included), the median of --rounds rounds after one
untimed round; the ratio is each contender's over mlpipe's.
The datasets: palmerpenguins (344 rows, bundled) and a synthetic table of --rows rows (8 numbers,
2 categories, 5 % gaps, 4 classes), both offline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.core import numerics, paths
from mlpipe.core.params import parse_params

MLP_PARAMS = {
    "model": {"width": None, "depth": 2, "hidden": 128, "dropout": 0.2},
    "train": {"epochs": 30, "batch_size": 64, "lr": 0.003},
}


def synthetic_csv(path: Path, rows: int) -> None:
    """A deterministic table: 8 informative numbers, 2 categories tied to the class, 5 % gaps."""
    from sklearn.datasets import make_classification

    x, y = make_classification(rows, n_features=8, n_informative=6, n_classes=4, random_state=0)
    rng = np.random.default_rng(0)
    city = np.where(rng.random(rows) < 0.7, y, rng.integers(0, 4, rows))
    plan = rng.integers(0, 3, rows)
    lines = ["x0,x1,x2,x3,x4,x5,x6,x7,city,plan,label"]
    for i in range(rows):
        cells = [("" if rng.random() < 0.05 else f"{v:.6g}") for v in x[i]]
        cells += [f"city{city[i]}", "" if rng.random() < 0.05 else f"plan{plan[i]}", f"class{y[i]}"]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def timed(fit: Callable[[], float], rounds: int) -> tuple[float, float]:
    """(median fit seconds over ``rounds`` after one untimed run, test accuracy)."""
    accuracy = fit()
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        accuracy = fit()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), accuracy


def sklearn_contenders() -> dict[str, Callable[[Any, Any, Any, Any, Any], float]]:
    """name -> fit on (train frame, labels), score on (test frame, labels); the column kinds."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    def logistic(train: Any, y_train: Any, test: Any, y_test: Any, kinds: Any) -> float:
        numbers, categories = kinds
        columns = ColumnTransformer([
            ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), numbers),
            ("categories", OneHotEncoder(handle_unknown="ignore"), categories),
        ])  # fmt: skip
        model = make_pipeline(columns, LogisticRegression(max_iter=1000))
        return float(model.fit(train, y_train).score(test, y_test))

    def boosting(train: Any, y_train: Any, test: Any, y_test: Any, kinds: Any) -> float:
        numbers, categories = kinds
        codes = ColumnTransformer(
            [
                (
                    "categories",
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan),
                    categories,
                )
            ],
            remainder="passthrough",
        )
        mask = [True] * len(categories) + [False] * len(numbers)
        model = make_pipeline(
            codes, HistGradientBoostingClassifier(categorical_features=mask, random_state=0)
        )
        return float(model.fit(train, y_train).score(test, y_test))

    return {"scikit-learn LogisticRegression": logistic, "scikit-learn HistGradientBoosting": boosting}


def bench(name: str, data: dict[str, Any], rounds: int) -> list[tuple[str, str, float, float]]:
    import pandas as pd

    from mlpipe.contracts import table
    from mlpipe.ml import evaluate, prepare, train

    params = parse_params({"data": data, **MLP_PARAMS})
    prepare.run(params)
    schema = table.read_schema()

    def frame(split: str) -> tuple[Any, Any]:
        rows = table.read_split(split, schema=schema)
        return pd.DataFrame({k: list(v) for k, v in rows.features.items()}), rows.labels

    def mlpipe_fit() -> float:
        train.run(params)
        evaluate.run(params)
        return _accuracy()

    (train_x, train_y), (test_x, test_y) = frame(paths.TRAIN_SPLIT), frame(paths.TEST_SPLIT)
    kinds = (
        [c.name for c in schema.columns if c.is_number],
        [c.name for c in schema.columns if not c.is_number],
    )
    for column in kinds[1]:  # gaps as one more level, which scikit-learn's encoders need as text
        for frame_ in (train_x, test_x):
            frame_[column] = frame_[column].fillna("").astype(str)
    results = [(name, "mlpipe MLP (train stage)", *timed(mlpipe_fit, rounds))]
    for contender, fit in sklearn_contenders().items():
        results.append(
            (name, contender, *timed(lambda fit=fit: fit(train_x, train_y, test_x, test_y, kinds), rounds))
        )
    return results


def _accuracy() -> float:
    import json

    return float(json.loads(paths.METRICS_FILE.read_text())["test_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    numerics.pin(parse_params({"data": {"dataset": "penguins"}, **MLP_PARAMS}).train.numerics)
    results = []
    with tempfile.TemporaryDirectory(prefix="mlpipe-bench-table-") as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlruns.db"
        results += bench("penguins (344 rows)", {"dataset": "penguins"}, args.rounds)
        synthetic_csv(Path(tmp) / "synthetic.csv", args.rows)
        data = {"dataset": "table", "source": "synthetic.csv", "target": "label"}
        results += bench(f"synthetic ({args.rows:,} rows)", data, args.rounds)
    print(f"| dataset | model | fit + score s (median of {args.rounds}) | vs mlpipe | test accuracy |")
    print("|---|---|---:|---:|---:|")
    base = {}
    for dataset, model, seconds, accuracy in results:
        base.setdefault(dataset, seconds)
        print(f"| {dataset} | {model} | {seconds:.2f} | {seconds / base[dataset]:.2f}× | {accuracy:.4f} |")


if __name__ == "__main__":
    main()
