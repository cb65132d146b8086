"""Tables through the contracts and `prepare`: params, typing, the split files, the preprocessing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mlpipe.contracts import table
from mlpipe.contracts.preprocessing import TablePreprocessing
from mlpipe.core.errors import DataError, ParamsError
from mlpipe.core.params import parse_params
from mlpipe.ml import prepare

CSV = """\
colour,size,weight,kind
red,1.5,10,a
blue,2.5,,b
red,NA,12,a
green,3.5,13,b
,4.5,14,a
blue,5.5,15,b
red,6.5,16,a
blue,7.5,17,b
red,8.5,18,a
blue,9.5,19,b
red,10.5,20,a
blue,11.5,21,b
red,12.5,22,a
blue,13.5,23,b
red,14.5,24,a
blue,15.5,25,b
red,16.5,26,
blue,17.5,27,b
red,18.5,28,a
blue,19.5,29,b
red,20.5,30,a
"""


def table_params(source: Path, **data: object) -> dict:
    return {
        "data": {"dataset": "table", "source": str(source), "target": "kind", "val_fraction": 0.2,
                 "test_fraction": 0.2} | data,
        "model": {"width": None},
    }  # fmt: skip


@pytest.fixture
def csv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "rows.csv"
    path.write_text(CSV)
    return path


def test_a_table_needs_its_source_and_target() -> None:
    with pytest.raises(ParamsError, match="source is required for dataset 'table'"):
        parse_params({"data": {"dataset": "table", "target": "y"}, "model": {"width": None}})
    with pytest.raises(ParamsError, match="target is required for dataset 'table'"):
        parse_params({"data": {"dataset": "table", "source": "rows.csv"}, "model": {"width": None}})


def test_image_datasets_refuse_the_table_keys_and_tables_the_conv_width() -> None:
    with pytest.raises(ParamsError, match="target applies to table datasets only"):
        parse_params({"data": {"dataset": "digits", "target": "y"}})
    with pytest.raises(ParamsError, match=r"model\.width applies to image models"):
        parse_params({"data": {"dataset": "penguins"}, "model": {"width": 16}})
    with pytest.raises(ParamsError, match=r"model\.width: an image model needs"):
        parse_params({"model": {"width": None}})


def test_the_table_keys_are_no_part_of_an_image_datasets_params() -> None:
    # The digest of image params (and so every image package's lineage) is what it was before tables.
    dumped = parse_params({"data": {"dataset": "digits"}}).model_dump()["data"]
    assert not {"target", "features", "columns"} & dumped.keys()
    table_dump = parse_params({"data": {"dataset": "penguins"}, "model": {"width": None}}).model_dump()[
        "data"
    ]
    assert {"target", "features", "columns"} <= table_dump.keys()


def test_prepare_types_the_columns_and_learns_their_statistics_on_the_train_split(csv_file: Path) -> None:
    prepare.run(parse_params(table_params(csv_file)))
    schema = table.read_schema()
    assert schema.names == ("colour", "size", "weight")
    assert [c.type for c in schema.columns] == ["category", "number", "number"]
    assert schema.classes == ("a", "b")
    train = table.read_split("train")
    sizes = train.features["size"][~np.isnan(train.features["size"])]
    size = schema.column("size")
    assert size.mean == pytest.approx(math.fsum(sizes) / len(sizes))
    assert (size.minimum, size.maximum) == (sizes.min(), sizes.max())
    assert schema.column("colour").levels == tuple(sorted({v for v in train.features["colour"] if v}))
    # the row without a label is dropped; the rest are split 60/20/20
    counts = {split: len(table.read_split(split)) for split in ("train", "val", "test")}
    assert sum(counts.values()) == 20


def test_prepare_writes_the_same_bytes_twice(csv_file: Path) -> None:
    params = parse_params(table_params(csv_file))
    prepare.run(params)
    first = {p.name: p.read_bytes() for p in Path("data/prepared").iterdir()}
    prepare.run(params)
    assert first == {p.name: p.read_bytes() for p in Path("data/prepared").iterdir()}


def test_a_split_file_reads_back_as_written(csv_file: Path) -> None:
    prepare.run(parse_params(table_params(csv_file)))
    test = table.read_split("test")
    text = Path("data/prepared/test.csv").read_text()
    assert text.splitlines()[0] == "colour,size,weight,kind"
    assert len(text.splitlines()) == len(test) + 1


def test_columns_override_the_inferred_types(csv_file: Path) -> None:
    prepare.run(parse_params(table_params(csv_file, columns={"size": "category"})))
    assert table.read_schema().column("size").type == "category"


def test_text_in_a_number_column_names_the_column_and_row(csv_file: Path) -> None:
    with pytest.raises(
        DataError, match=r"column 'colour', row 1 \(after the header\): 'red' is not a number"
    ):
        prepare.run(parse_params(table_params(csv_file, columns={"colour": "number"})))


def test_an_unknown_target_lists_the_columns(csv_file: Path) -> None:
    with pytest.raises(DataError, match=r"no column 'species' \(data.target\); its columns: \['colour'"):
        prepare.run(parse_params(table_params(csv_file, target="species")))


def test_features_choose_the_columns(csv_file: Path) -> None:
    prepare.run(parse_params(table_params(csv_file, features=["weight"])))
    assert table.read_schema().names == ("weight",)


def test_a_parquet_file_is_read_like_the_csv(csv_file: Path, tmp_path: Path) -> None:
    prepare.run(parse_params(table_params(csv_file)))
    from_csv = {p.name: p.read_bytes() for p in Path("data/prepared").iterdir()}
    rows = [line.split(",") for line in CSV.splitlines()[1:]]
    number = [None if v in ("", "NA") else float(v) for v in (r[1] for r in rows)]
    weight = [None if v == "" else int(v) for v in (r[2] for r in rows)]
    columns = {"colour": [r[0] or None for r in rows], "size": number, "weight": weight,
               "kind": [r[3] or None for r in rows]}  # fmt: skip
    pq.write_table(pa.table(columns), tmp_path / "rows.parquet")
    prepare.run(parse_params(table_params(tmp_path / "rows.parquet")))
    assert {p.name: p.read_bytes() for p in Path("data/prepared").iterdir()} == from_csv


def test_model_inputs_spell_a_gap_as_the_graph_expects() -> None:
    columns = (
        table.Column("size", "number", mean=2.0, std=1.0),
        table.Column("colour", "category", levels=("blue", "red")),
    )
    inputs = table.model_inputs(
        columns, {"size": [1.5, None, float("nan")], "colour": ["red", None, float("nan")]}
    )
    assert inputs["size"].dtype == np.float32 and np.isnan(inputs["size"][1:]).all()
    assert inputs["colour"].tolist() == ["red", table.MISSING_CATEGORY, table.MISSING_CATEGORY]


def test_gaps_become_the_training_mean_and_unseen_levels_no_level() -> None:
    columns = (
        table.Column("size", "number", mean=2.0, std=4.0),
        table.Column("colour", "category", levels=("blue", "red")),
    )
    pre = TablePreprocessing(columns)
    rows = table.Table(
        {"size": np.array([6.0, np.nan]), "colour": np.array(["red", "purple"], dtype=object)},
        np.array([0, 1]),
        ("a", "b"),
    )
    numbers, codes = pre.encode(rows)
    assert codes.tolist() == [[1], [-1]]
    features = pre.features(torch.from_numpy(numbers), torch.from_numpy(codes))
    assert features.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    assert pre.width == 3
