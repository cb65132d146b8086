"""`mlpipe serve`'s options: KServe's own, plus the package directory and the listen address."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlpipe.core.errors import MlpipeError
from mlpipe.serving.model_package import InputSpec
from mlpipe.serving.server import build_parser, default_max_body_bytes, main


def test_defaults_suit_a_kserve_pod() -> None:
    args = build_parser().parse_args([])
    assert args.model_dir == Path("/mnt/models")
    assert args.host == "0.0.0.0"  # noqa: S104 - a pod listens on its own interface
    assert args.http_port == 8080
    assert args.model_name is None  # the package's name
    assert args.enable_grpc is False
    assert args.threads == 1


@pytest.mark.parametrize("flag", ["--http-port", "--http_port"])
def test_http_port_takes_both_spellings(flag: str) -> None:
    assert build_parser().parse_args([flag, "9001"]).http_port == 9001


@pytest.mark.parametrize("flag", ["--model-name", "--model_name"])
def test_model_name_takes_both_spellings(flag: str) -> None:
    assert build_parser().parse_args([flag, "digits"]).model_name == "digits"


def test_kserve_options_pass_through() -> None:
    args = build_parser().parse_args(["--timeout-keep-alive", "5", "--enable_latency_logging", "true"])
    assert (args.timeout_keep_alive, args.enable_latency_logging) == (5, True)


def test_one_access_line_and_no_latency_line_by_default() -> None:
    args = build_parser().parse_args([])
    assert (args.access_log, args.enable_latency_logging) == ("text", False)
    assert build_parser().parse_args(["--access-log", "json"]).access_log == "json"


def test_default_body_limit_fits_a_full_batch_as_json() -> None:
    spec = InputSpec("pixels", 8, 8, 16, 256, "UINT8")
    batch = json.dumps({"inputs": [{"name": "pixels", "shape": [256, 8, 8], "datatype": "FP32",
                                    "data": [16.000000000000004] * (256 * 64)}]})  # fmt: skip
    assert len(batch) < default_max_body_bytes(spec) < 2 * len(batch)
    assert build_parser().parse_args([]).max_body_bytes is None  # derived from the package


def test_grpc_is_refused_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(MlpipeError, match=r"--enable_grpc: .* REST only"):
        main(["--model-dir", str(tmp_path), "--enable_grpc", "true"])
