"""`mlpipe serve` of a table package over real HTTP: rows in, evaluate's answers out, a 400 naming
the column for every bad value, no 5xx under random garbage, the per-column drift score on
/metrics, and `mlpipe predict` and `mlpipe drift` on the table.

The project is the bundled penguins table on tiny params after a real `dvc repro`; one server
(drift window of WINDOW rows) serves every test here.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from harness.monitoring import IMAGE_MODEL_METRICS, exported_names, used_metric_names
from harness.servers import ModelServer, mlpipe_server
from prometheus_client.parser import text_string_to_metric_families

from mlpipe.contracts import drift, table
from tests.conftest import TINY_TABLE_PARAMS, make_project, run
from tests.model.serving_cases import PACKAGE, evaluate_predictions

pytestmark = pytest.mark.slow

MODEL = "penguins"
PREPARED = "data/prepared"
WINDOW = 200  # rows; in-distribution windows of 200 rows score far below the threshold (PSI ~10/200)
SCALED = "body_mass_g"  # the numeric column the drift test scales
GARBAGE_REQUESTS = 1000
BATCH = 20


@dataclass(frozen=True)
class Built:
    project: Path
    server: ModelServer
    columns: tuple[table.Column, ...]

    @property
    def v1(self) -> str:
        return f"{self.server.url}/v1/models/{MODEL}:predict"

    @property
    def v2(self) -> str:
        return f"{self.server.url}/v2/models/{MODEL}/infer"

    def v2_body(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "inputs": [
                {
                    "name": column.name,
                    "shape": [len(rows)],
                    "datatype": "FP64" if column.is_number else "BYTES",
                    "data": [row[column.name] for row in rows],
                }
                for column in self.columns
            ]
        }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    package = {"model_name": MODEL, "register_model": False}
    project = make_project(
        tmp_path_factory.mktemp("table") / "project", TINY_TABLE_PARAMS | {"package": package}
    )
    run("dvc", "repro", cwd=project)
    columns = table.read_schema(project / PREPARED).columns
    with mlpipe_server(project / PACKAGE, ["--drift-window", str(WINDOW)]) as server:
        yield Built(project, server, columns)


@pytest.fixture(scope="module")
def client(built: Built) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as http:
        yield http


def rows_of(built: Built, split: str) -> list[dict[str, Any]]:
    return table.read_split(split, built.project / PREPARED).records()


def labels(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    body = response.json()
    if "predictions" in body:
        return [p["label"] for p in body["predictions"]]
    return next(o for o in body["outputs"] if o["name"] == "label")["data"]


def test_test_rows_get_evaluate_s_answers_over_v1_and_v2(built: Built, client: httpx.Client) -> None:
    rows = rows_of(built, "test")
    assert labels(client.post(built.v1, json={"instances": rows})) == evaluate_predictions(built.project)
    assert labels(client.post(built.v2, json=built.v2_body(rows))) == evaluate_predictions(built.project)


def test_a_row_with_gaps_is_answered(built: Built, client: httpx.Client) -> None:
    [row] = rows_of(built, "test")[:1]
    gaps = {name: None if i % 2 else value for i, (name, value) in enumerate(row.items())}
    assert len(labels(client.post(built.v1, json={"instances": [gaps, dict.fromkeys(row)]}))) == 2
    assert len(labels(client.post(built.v2, json=built.v2_body([gaps])))) == 1


def refusal(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    return response.json()["error"]


def test_text_in_a_number_column_is_refused_naming_the_column(built: Built, client: httpx.Client) -> None:
    [row] = rows_of(built, "test")[:1]
    number = next(column.name for column in built.columns if column.is_number)
    error = refusal(client.post(built.v1, json={"instances": [row | {number: "heavy"}]}))
    assert f"column '{number}' is a number" in error and '"heavy"' in error
    v2 = built.v2_body([row])
    next(t for t in v2["inputs"] if t["name"] == number)["data"] = ["heavy"]
    assert f"column '{number}' is a number" in refusal(client.post(built.v2, json=v2))


def test_an_unknown_or_a_missing_column_is_refused_naming_it(built: Built, client: httpx.Client) -> None:
    [row] = rows_of(built, "test")[:1]
    first = built.columns[0].name
    unknown = refusal(client.post(built.v1, json={"instances": [row | {"wingspan": 3}]}))
    assert 'unknown column "wingspan"' in unknown
    missing = {name: value for name, value in row.items() if name != first}
    assert f"column '{first}' is missing" in refusal(client.post(built.v1, json={"instances": [missing]}))
    v2 = built.v2_body([row])
    v2["inputs"] = v2["inputs"][1:]
    assert f"column '{first}' is missing" in refusal(client.post(built.v2, json=v2))


JUNK: list[Any] = [
    None, "", "x" * 5000, "Dream", -1, 0, 1e308, -1e308, 10**30, 3.5, True, False, [], [1, 2], {}, {"a": 1},
    "NaN", "1e999", "\u0000", "🐧", 2**63, -(2**63) - 1,
]  # fmt: skip


def garbage(rng: random.Random, built: Built, row: dict[str, Any]) -> tuple[str, Any, bytes | None]:
    """A random malformed request: (protocol, JSON body, or None and raw bytes)."""
    names = [column.name for column in built.columns]
    kind = rng.randrange(10)
    if kind == 0:
        return "v1", None, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return rng.choice(["v1", "v2"]), rng.choice(JUNK), None
    if kind == 2:  # a bare NaN or Infinity, which only a lenient JSON reader takes
        text = json.dumps(built.v2_body([row])).replace("[" + json.dumps(row[names[1]]), "[NaN", 1)
        return "v2", None, text.encode()
    changed = dict(row)
    for _ in range(rng.randrange(1, 3)):
        match rng.randrange(3):
            case 0:
                changed[rng.choice(names)] = rng.choice(JUNK)
            case 1:
                changed.pop(rng.choice(names), None)
            case _:
                changed[rng.choice(["wingspan", "", "Island", "x" * 300])] = rng.choice(JUNK)
    if kind < 6:
        instances: Any = [changed] * rng.choice([1, 2, 300]) if rng.random() < 0.9 else changed
        return "v1", {"instances": instances}, None
    body = built.v2_body([row])
    tensor = rng.choice(body["inputs"])
    field = rng.choice(["name", "shape", "datatype", "data", "parameters"])
    tensor[field] = rng.choice([*JUNK, [1, 1], [0], [-1], [1, 2, 3], "FP16", "BOOL", "INT8", "BYTES", [[1]]])
    return "v2", body, None


def test_a_thousand_mixed_valid_and_garbage_requests_get_no_5xx(built: Built, client: httpx.Client) -> None:
    rows = rows_of(built, "test")
    rng = random.Random(25)
    statuses: Counter[int] = Counter()
    for i in range(GARBAGE_REQUESTS):
        row = rows[i % len(rows)]
        if i % 2:
            protocol, body, raw = garbage(rng, built, row)
        else:
            protocol = "v1" if i % 4 else "v2"
            body, raw = ({"instances": [row]} if protocol == "v1" else built.v2_body([row])), None
        content = raw if raw is not None else json.dumps(body).encode()
        response = client.post(
            built.v1 if protocol == "v1" else built.v2,
            content=content,
            headers={"content-type": "application/json"},
        )
        statuses[response.status_code] += 1
        if i % 2 == 0:
            assert response.status_code == 200, response.text
        else:
            assert response.status_code < 500, (body, raw, response.text)
            if response.status_code != 200:  # junk can be valid (an unseen level, a whole number)
                assert response.json()["error"], response.text
    assert not [status for status in statuses if status >= 500], statuses
    assert statuses[400] > GARBAGE_REQUESTS // 4, statuses
    assert "Traceback" not in built.server.child.output(limit=None)


def drift_scores(built: Built) -> tuple[dict[str, float], float]:
    """Each column's drift score and the model's, as /metrics shows them now."""
    text = httpx.get(f"{built.server.url}/metrics", timeout=10).text
    columns, model = {}, math.nan
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlpipe_column_drift_score":
                columns[sample.labels["column"]] = sample.value
            elif sample.name == "mlpipe_drift_score":
                model = sample.value
    return columns, model


def send(built: Built, client: httpx.Client, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), BATCH):
        labels(client.post(built.v1, json={"instances": rows[start : start + BATCH]}))


def in_distribution(built: Built, seed: int) -> list[dict[str, Any]]:
    """WINDOW rows drawn with replacement from every prepared row (train, val and test): the
    population the training split was drawn from. The test split alone is too small for that:
    its 69 rows differ from training by a PSI of 0.28 in one column (noise of about
    9 * (1/69 + 1/240) = 0.17 is expected)."""
    rows = [row for split in ("train", "val", "test") for row in rows_of(built, split)]
    rng = np.random.default_rng(seed)
    return [rows[i] for i in rng.integers(0, len(rows), WINDOW)]


def test_the_scaled_column_s_drift_score_rises_and_the_others_stay_low(
    built: Built, client: httpx.Client
) -> None:
    send(built, client, in_distribution(built, 0))
    columns, model = drift_scores(built)
    assert set(columns) == {column.name for column in built.columns}
    assert max(columns.values()) < drift.DRIFT_THRESHOLD, columns
    assert model == pytest.approx(max(columns.values()))

    scaled = [row | {SCALED: row[SCALED] and row[SCALED] * 1.5} for row in in_distribution(built, 1)]
    send(built, client, scaled)
    columns, model = drift_scores(built)
    assert columns.pop(SCALED) >= drift.DRIFT_THRESHOLD
    assert max(columns.values()) < drift.DRIFT_THRESHOLD, columns
    assert model >= drift.DRIFT_THRESHOLD


def test_every_metric_the_dashboard_and_rules_use_for_a_table_is_on_the_live_metrics_page(
    built: Built, client: httpx.Client
) -> None:
    send(built, client, rows_of(built, "test")[:1])  # KServe's histograms appear on use
    exported = exported_names(httpx.get(f"{built.server.url}/metrics", timeout=10).text)
    assert used_metric_names() - IMAGE_MODEL_METRICS - exported == set()


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_mlpipe_predict_sends_random_test_rows_and_scores_them(built: Built, protocol: str) -> None:
    result = run(
        "mlpipe", "predict", "--url", built.server.url, "--n", "12", "--protocol", protocol, "--seed", "3",
        "--min-accuracy", "0.6", cwd=built.project,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0] == f"model {MODEL} ({protocol}), 12 random test rows, seed 3"
    assert lines[-1].startswith("accuracy ")


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path


def test_mlpipe_drift_compares_a_csv_of_rows_column_by_column(built: Built, tmp_path: Path) -> None:
    same = run("mlpipe", "drift", "--rows", str(write_rows(tmp_path / "same.csv", in_distribution(built, 0))),
               cwd=built.project)  # fmt: skip
    assert same.stdout.splitlines()[-1].endswith("no drift")
    scaled = [row | {SCALED: row[SCALED] and row[SCALED] * 1.5} for row in in_distribution(built, 1)]
    shifted = run("mlpipe", "drift", "--rows", str(write_rows(tmp_path / "scaled.csv", scaled)),
                  cwd=built.project, check=False)  # fmt: skip
    assert shifted.returncode == 1
    assert shifted.stdout.splitlines()[-1].endswith(f"DRIFT in {SCALED}")
    assert "mlpipe: error: the inputs drifted: PSI" in shifted.stderr
