"""The `mlpipe` command: one subcommand per pipeline stage (called by dvc.yaml), plus tools."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Literal

import typer

from mlpipe import paths
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
            "botocore",
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
    from mlpipe import distributed
    from mlpipe.train import select_device

    train_params = load_params().train
    # train.nproc_per_node > 1: run this same command under torchrun, one process per rank.
    device = select_device(train_params.device)
    distributed.relaunch_if_requested(train_params.nproc_per_node, device, ["train"])
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


@app.command()
def predict(
    url: Annotated[str, typer.Option(help="Base URL of the model server, e.g. http://127.0.0.1:8080.")],
    n: Annotated[int, typer.Option("--n", help="Random test images to send, one request each.")] = 10,
    protocol: Annotated[Literal["v1", "v2"], typer.Option(help="Inference protocol.")] = "v2",
    model_name: Annotated[
        str | None, typer.Option(help="Model to call (default: the one model the server lists).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for drawing the images (default: random).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each response.")] = 10.0,
    data_dir: Annotated[Path, typer.Option(help="The prepared data (test split).")] = paths.PREPARED_DIR,
    min_accuracy: Annotated[float, typer.Option(help="Fail if the accuracy is below this.")] = 0.0,
) -> None:
    """Send random test images to a model server and print prediction vs truth and the accuracy."""
    from mlpipe.serving.client import PredictionError, predict_samples

    result = predict_samples(url, n, protocol, model_name, seed, timeout, data_dir)
    for line in result.lines():
        typer.echo(line)
    if result.accuracy < min_accuracy:
        raise PredictionError(f"accuracy {result.accuracy:.3f} is below --min-accuracy {min_accuracy}")


@app.command()
def report(
    base: Annotated[str, typer.Option(help="Git revision to compare with: the MR's target branch.")] = "main",
    out: Annotated[
        Path, typer.Option(help="Markdown file to write; its figures go to a folder of the same name.")
    ] = Path("reports/report.md"),
) -> None:
    """Write a report for reviewers: verdict, metrics and params diff against BASE, plots old vs new."""
    from mlpipe.report import write_report

    typer.echo(write_report(base, out))
    log.info("wrote %s", out)


@app.command()
def gate(
    promote: Annotated[
        bool, typer.Option(help="If it passes, make this checkout's model version the `champion`.")
    ] = False,
) -> None:
    """Check the candidate against params.yaml's `gate` thresholds and the registered champion."""
    from mlpipe import gate as gating

    typer.echo(gating.run(load_params(), promote_on_pass=promote))


@app.command()
def rollback() -> None:
    """Point `champion` back at the `previous` model version (then redeploy it)."""
    from mlpipe import gate as gating

    client = gating.require_registry()
    rolled_back, restored = gating.rollback(client, load_params().package.model_name)
    typer.echo(f"@{gating.CHAMPION}: v{rolled_back} -> v{restored}")


@app.command("model-uri")
def model_uri(
    alias: Annotated[str, typer.Option(help="Registry alias of the model version.")] = "champion",
) -> None:
    """Print where the package of the version holding ALIAS is stored (what a deployment serves)."""
    from mlpipe import gate as gating

    typer.echo(gating.package_uri(gating.require_registry(), load_params().package.model_name, alias))


kfp_app = typer.Typer(help="dvc.yaml's stages as a Kubeflow Pipeline.", no_args_is_help=True)
app.add_typer(kfp_app, name="kfp")


@kfp_app.command("compile")
def kfp_compile(
    out: Annotated[Path, typer.Option(help="Where to write the compiled pipeline (KFP IR YAML).")] = Path(
        "pipeline.yaml"
    ),
    image: Annotated[str, typer.Option(help="The train image every task runs in.")] = (
        "registry.example.com/mlpipe/train:latest"
    ),
) -> None:
    """Compile dvc.yaml into a Kubeflow Pipeline: one task per stage, in dvc.yaml's order."""
    from mlpipe import kfp_pipeline

    kfp_pipeline.compile_pipeline(out, paths.DVC_YAML, image)
    typer.echo(f"wrote {out}")


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
