"""Atomic writes: a failure never leaves a half-written artifact."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mlpipe.core import atomic


def test_write_bytes_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.bin"
    atomic.write_bytes(target, b"old")
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_write_json_is_stable(tmp_path: Path) -> None:
    atomic.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def test_equal_arrays_give_identical_npy_bytes(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    atomic.write_npy(tmp_path / "a.npy", array)
    atomic.write_npy(tmp_path / "b.npy", array.copy())
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


def test_replace_dir_swaps_in_the_new_contents(tmp_path: Path) -> None:
    target = tmp_path / "package"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with atomic.replace_dir(target) as staging:
        (staging / "fresh.txt").write_text("fresh")
    assert sorted(p.name for p in target.iterdir()) == ["fresh.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["package"]


def test_replace_dir_keeps_the_old_contents_when_the_block_fails(tmp_path: Path) -> None:
    target = tmp_path / "package"
    target.mkdir()
    (target / "good.txt").write_text("good")
    with pytest.raises(RuntimeError), atomic.replace_dir(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("export failed")
    assert (target / "good.txt").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["package"]


def test_what_a_killed_writer_left_is_removed_by_the_next_one(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    leftover_dir = tmp_path / f".package.pid{gone.pid}.abcd1234.tmp"
    leftover_dir.mkdir()
    (leftover_dir / "model.onnx").write_bytes(b"half")
    leftover_file = tmp_path / f".model.pt.pid{gone.pid}.x1y2.tmp"
    leftover_file.write_bytes(b"half")
    ours = tmp_path / f".model.pt.pid{os.getpid()}.x1y2.tmp"
    ours.write_bytes(b"in progress")
    with atomic.replace_dir(tmp_path / "package") as staging:
        (staging / "model.onnx").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["package", ours.name])


def test_replace_files_moves_every_output_or_none(tmp_path: Path) -> None:
    first, second = tmp_path / "models" / "model.pt", tmp_path / "reports" / "metrics.json"
    with atomic.replace_files([first, second]) as staged:
        staged[first].write_bytes(b"model")
        staged[second].write_text("{}")
    with pytest.raises(RuntimeError), atomic.replace_files([first, second]) as staged:
        staged[first].write_bytes(b"new model")
        raise RuntimeError("tracking failed")
    assert first.read_bytes() == b"model"
    assert second.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "reports"]
