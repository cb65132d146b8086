"""Sharding, batch splitting and the launch command, without starting processes."""

from __future__ import annotations

import sys

import pytest
import torch

from mlpipe.core.distributed import World, launch_command, relaunch_if_requested
from mlpipe.core.errors import MlpipeError


def test_shards_are_equal_disjoint_and_cover_all_but_the_remainder() -> None:
    values = torch.arange(11)
    shards = [World(rank, rank, 3, "gloo").shard(values, values * 10) for rank in range(3)]
    assert [len(inputs) for inputs, _ in shards] == [3, 3, 3]
    seen = torch.cat([inputs for inputs, _ in shards])
    assert len(set(seen.tolist())) == 9
    for inputs, labels in shards:  # rows stay paired across tensors
        assert torch.equal(labels, inputs * 10)


def test_one_process_keeps_everything() -> None:
    values = torch.arange(5)
    (same,) = World().shard(values)
    assert same is values
    assert World().local_batch_size(7) == 7


def test_the_global_batch_is_split_evenly() -> None:
    assert World(0, 0, 4, "gloo").local_batch_size(64) == 16


def test_a_batch_that_does_not_split_names_the_param() -> None:
    with pytest.raises(MlpipeError, match=r"train\.batch_size 30 .* multiple of the 4"):
        World(0, 0, 4, "gloo").local_batch_size(30)


def test_launch_command_runs_this_cli_under_pytorchs_launcher() -> None:
    assert launch_command(2, ["train"]) == [
        sys.executable,
        *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "mlpipe", "train"),
    ]


def test_one_process_is_not_relaunched() -> None:
    assert relaunch_if_requested(1, torch.device("cpu"), ["train"]) is None
