"""The `mlpipe` command: one subcommand per pipeline stage (called by dvc.yaml), plus tools."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

import typer

from mlpipe.errors import MlpipeError
from mlpipe.params import load_params

app = typer.Typer(
    name="mlpipe",
    help="Reproducible ML pipeline: prepare → train → evaluate → package (run them with `dvc repro`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("mlpipe")


def configure_logging(verbose: bool) -> None:
    """One logging setup for every command; third-party chatter only when verbose."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        for noisy in (
            "mlflow",
            "alembic",
            "urllib3",
            "onnxscript",
            "onnx_ir",
            "httpx",
            "matplotlib",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(mlflow|torch|onnxscript)\b.*")
        os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    configure_logging(verbose)


@app.command()
def prepare() -> None:
    """Load the dataset named in params.yaml and write the train/val/test split to data/prepared/."""
    _run_stage("prepare")


@app.command()
def train() -> None:
    """Train the CNN; write models/model.pt and the training history and metrics."""
    _run_stage("train")


@app.command()
def evaluate() -> None:
    """Score the model on the test split; write reports/metrics.json, predictions and figures."""
    _run_stage("evaluate")


@app.command()
def package() -> None:
    """Export models/package/ (ONNX + manifest + model card) and register it in MLflow."""
    _run_stage("package")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)
def serve(ctx: typer.Context) -> None:
    """Serve a package with KServe (V1 and V2 protocols); `mlpipe serve --help` lists the options."""
    from mlpipe.serving.server import main as serve_main

    serve_main(ctx.args)


def _run_stage(module: str) -> None:
    params = load_params()
    importlib.import_module(f"mlpipe.{module}").run(params)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 1."""
    try:
        app()
    except MlpipeError as e:
        print(f"mlpipe: error: {e}", file=sys.stderr)
        sys.exit(1)
