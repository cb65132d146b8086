"""The `mlpipe` command: one subcommand per pipeline stage (called by dvc.yaml), plus tools."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer

from mlpipe.core import numerics, paths
from mlpipe.core.errors import MlpipeError
from mlpipe.core.params import Params, load_params
from mlpipe.workflows.tuning import prefork

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
    params = _pinned_params()
    from mlpipe.ml import prepare as stage

    _run_stage(stage.run, params)


@app.command()
def train() -> None:
    """Train the CNN; write models/model.pt and the training history and metrics."""
    params = _pinned_params()
    from mlpipe.core import distributed
    from mlpipe.ml import train as stage

    # train.nproc_per_node > 1: run this same command under torchrun, one process per rank.
    device = stage.select_device(params.train.device)
    distributed.relaunch_if_requested(params.train.nproc_per_node, device, ["train"])
    _run_stage(stage.run, params)


@app.command()
def evaluate() -> None:
    """Score the model on the test split; write reports/metrics.json, predictions and figures."""
    params = _pinned_params()
    from mlpipe.ml import evaluate as stage

    _run_stage(stage.run, params)


@app.command()
def package() -> None:
    """Export models/package/ (ONNX + manifest + model card) and register it in MLflow."""
    params = _pinned_params()
    from mlpipe.ml import package as stage

    _run_stage(stage.run, params)


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
    n: Annotated[
        int, typer.Option("--n", help="Random test images (or a table's rows) to send, one request each.")
    ] = 10,
    protocol: Annotated[Literal["v1", "v2"], typer.Option(help="Inference protocol.")] = "v2",
    model_name: Annotated[
        str | None, typer.Option(help="Model to call (default: the one model the server lists).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for drawing them (default: random).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each response.")] = 10.0,
    data_dir: Annotated[Path, typer.Option(help="The prepared data (test split).")] = paths.PREPARED_DIR,
    min_accuracy: Annotated[float, typer.Option(help="Fail if the accuracy is below this.")] = 0.0,
) -> None:
    """Send random test images (or rows) to a model server and print prediction vs truth and the accuracy."""
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
    from mlpipe.workflows.report import write_report

    typer.echo(write_report(base, out))
    log.info("wrote %s", out)


@app.command()
def gate(
    promote: Annotated[
        bool, typer.Option(help="If it passes, make this checkout's model version the `champion`.")
    ] = False,
) -> None:
    """Check the candidate against params.yaml's `gate` thresholds and the registered champion."""
    from mlpipe.workflows import gate as gating

    typer.echo(gating.run(load_params(), promote_on_pass=promote))


@app.command()
def rollback() -> None:
    """Point `champion` back at the `previous` model version (then redeploy it)."""
    from mlpipe.tracking import registry

    client = registry.require_registry()
    rolled_back, restored = registry.rollback(client, load_params().package.model_name)
    typer.echo(f"@{registry.CHAMPION}: v{rolled_back} -> v{restored}")


@app.command("model-uri")
def model_uri(
    alias: Annotated[str, typer.Option(help="Registry alias of the model version.")] = "champion",
) -> None:
    """Print where the package of the version holding ALIAS is stored (what a deployment serves)."""
    from mlpipe.tracking import registry

    typer.echo(registry.package_uri(registry.require_registry(), load_params().package.model_name, alias))


@app.command()
def verify() -> None:
    """Rebuild every stage from scratch in a temporary copy and compare each output with dvc.lock."""
    from mlpipe.workflows import verify as verification

    typer.echo(verification.run())


runcache_app = typer.Typer(help="DVC's run cache, shared between clones.", no_args_is_help=True)
app.add_typer(runcache_app, name="runcache")


@runcache_app.command("push")
def runcache_push() -> None:
    """`dvc push --run-cache`, plus the outputs another clone's restore fetches from the default
    remote (the metrics and plots kept in git among them): what CI runs after `dvc repro`."""
    from mlpipe.workflows import runcache

    result = runcache.push(Path.cwd())
    typer.echo(f"{result.transferred} files pushed; {result.outputs} outputs beside the run cache")


@app.command()
def drift(
    model_dir: Annotated[
        Path, typer.Option(help="The package whose training profile to compare with.")
    ] = paths.PACKAGE_DIR,
    images: Annotated[
        Path | None, typer.Option(help="A .npy file of raw-pixel images [N, H, W] (default: --split).")
    ] = None,
    rows: Annotated[
        Path | None,
        typer.Option(help="A table model's: a CSV file of rows, its header naming the model's columns."),
    ] = None,
    split: Annotated[str, typer.Option(help="The prepared split to compare, without --images.")] = (
        paths.TEST_SPLIT
    ),
    data_dir: Annotated[Path, typer.Option(help="The prepared data (for --split).")] = paths.PREPARED_DIR,
    shift: Annotated[
        Literal["none", "invert", "brighten", "darken"],
        typer.Option(help="Compare a shifted copy of the images instead: what drift looks like."),
    ] = "none",
    threshold: Annotated[
        float | None, typer.Option(help="PSI at or above which the inputs have drifted (default 0.2).")
    ] = None,
) -> None:
    """Compare a batch of images (or a table's rows, column by column) with the package's training
    profile; exit 1 if they drifted."""
    from mlpipe.contracts import drift as drifting
    from mlpipe.contracts import table

    profile = drifting.read_any_profile(model_dir)
    limit = drifting.DRIFT_THRESHOLD if threshold is None else threshold
    result: drifting.DriftResult | drifting.TableDriftResult
    if isinstance(profile, drifting.TableProfile):
        if images or shift != "none":
            raise MlpipeError(
                f"{model_dir} holds a table model: compare rows (--rows or --split), not images"
            )
        features = drifting.load_rows(rows, profile) if rows else table.read_split(split, data_dir).features
        result = drifting.compare_table(profile, features, limit)
    else:
        if rows:
            raise MlpipeError(f"{model_dir} holds an image model: compare images (--images or --split)")
        batch = drifting.load_images(images) if images else drifting.load_split(data_dir, split)
        result = drifting.compare(profile, drifting.shifted(batch, shift, profile.pixel_max), limit)
    for line in result.lines():
        typer.echo(line)
    if result.drifted:
        raise drifting.DriftError(f"the inputs drifted: PSI {result.psi:.4f} >= {limit:g}")


tune_app = typer.Typer(
    help="Hyperparameter search over tune.yaml: trials are DVC experiments up to `evaluate`.",
    no_args_is_help=False,
)
app.add_typer(tune_app, name="tune")


@tune_app.callback(invoke_without_command=True)
def tune(
    ctx: typer.Context,
    trials: Annotated[
        int | None, typer.Option(min=1, help="The study's budget of finished trials (default: tune.yaml's).")
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Trials run at once, each a `dvc exp run --temp`.")] = 1,
    enqueue: Annotated[
        list[str] | None,
        typer.Option(help="Params to try first, e.g. 'train.lr=0.01,model.width=16' (repeatable)."),
    ] = None,
    warm: Annotated[
        bool,
        typer.Option(
            help="Fork the trials' stages from one process that has imported torch and MLflow "
            "(--no-warm: a fresh Python process per stage, as `dvc exp run` alone would)."
        ),
    ] = True,
) -> None:
    """Run (or continue) the study in tune.db; print the best trial and how to keep it."""
    if ctx.invoked_subcommand is not None:
        return
    from mlpipe.workflows.tuning.space import load_space
    from mlpipe.workflows.tuning.study import Tuner, summary

    space = load_space()
    first = [space.parse_assignments(text) for text in enqueue or []]
    outcome = Tuner(space, Path.cwd(), warm=warm).run(trials or space.trials, jobs, first)
    typer.echo(summary(outcome.study, space))
    if outcome.interrupted:
        typer.echo("interrupted: run `mlpipe tune` again to continue the study", err=True)
        raise typer.Exit(130)


@tune_app.command("katib")
def tune_katib(
    image: Annotated[str, typer.Option(help="The Dockerfile's `train` image, as the cluster pulls it.")],
    repo_url: Annotated[
        str | None, typer.Option(help="Git URL the trial pods fetch (default: remote `origin`).")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Commit they run (default: HEAD).")] = None,
    namespace: Annotated[str, typer.Option(help="Namespace of the Experiment.")] = "kubeflow",
    parallel: Annotated[int, typer.Option(min=1, help="Trials Katib runs at once.")] = 2,
    gpus: Annotated[int, typer.Option(min=0, help="GPUs per trial pod.")] = 0,
) -> None:
    """Print tune.yaml as a Katib Experiment (YAML); `kubectl apply -f -` submits it."""
    from mlpipe.core import vcs
    from mlpipe.workflows.tuning.katib import experiment, to_yaml
    from mlpipe.workflows.tuning.space import load_space

    def from_git(*args: str) -> str:
        try:
            return vcs.git(*args)
        except vcs.CommandError as e:
            raise vcs.CommandError(f"{e}; pass the value as an option", e.returncode) from e

    rendered = experiment(
        load_space(),
        image=image,
        repo_url=repo_url or from_git("remote", "get-url", "origin"),
        revision=revision or from_git("rev-parse", "HEAD"),
        namespace=namespace,
        parallel_trials=parallel,
        gpus=gpus,
    )
    typer.echo(to_yaml(rendered), nl=False)


@tune_app.command("trial")
def tune_trial(
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="A param of the trial: section.name=value (repeatable).")
    ] = None,
) -> None:
    """One Katib trial: apply the params, run prepare, train, evaluate; print `name=value` metrics."""
    from mlpipe.workflows.tuning.katib import run_trial

    for line in run_trial(set_ or []):
        typer.echo(line)


@app.command()
def retrain(
    base: Annotated[str, typer.Option(help="Branch the merge request targets (never committed to).")] = (
        "main"
    ),
    remote: Annotated[str, typer.Option(help="Git remote the new branch is pushed to.")] = "origin",
    merge_request: Annotated[
        bool,
        typer.Option(help="Open a merge request (needs CI_API_V4_URL, CI_PROJECT_ID, GITLAB_TOKEN)."),
    ] = True,
) -> None:
    """If the imported raw data changed upstream: retrain, push a branch and open a merge request."""
    from mlpipe.integrations.gitlab import GitLab
    from mlpipe.workflows import retrain as retraining

    gitlab = GitLab.from_env() if merge_request else None
    typer.echo(retraining.run(load_params(), base=base, remote=remote, gitlab=gitlab).message)


deploy_app = typer.Typer(
    help="deploy/ rendered for `kubectl apply -f -` (YAML on stdout): the model service, its S3 Secret.",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")
EnvArgument = Annotated[
    str, typer.Argument(help="The environment: an overlay in deploy/overlays/ (staging, production, canary).")
]
DeployDirOption = Annotated[Path, typer.Option(help="The kustomize tree to render.")]


@deploy_app.command("manifest")
def deploy_manifest(
    env: EnvArgument = "",
    image: Annotated[str, typer.Option(help="The serve image reference.")] = "",
    storage_uri: Annotated[str, typer.Option(help="Where the package directory lies (s3://...).")] = "",
    canary: Annotated[str, typer.Option(help="Traffic percent for the new revision (default: none).")] = "",
    model_name: Annotated[str, typer.Option(help="Service and model name (default: params.yaml's).")] = "",
    deploy_dir: DeployDirOption = paths.DEPLOY_DIR,
) -> None:
    """The InferenceService and its ServiceAccount for ENV, rendered by `kubectl kustomize`."""
    from mlpipe.integrations import deploy

    manifests = deploy.render_manifests(
        env, image, storage_uri, deploy.parse_canary(canary), model_name or None, deploy_dir
    )
    typer.echo(deploy.dump(manifests), nl=False)


@deploy_app.command("secret")
def deploy_secret(env: EnvArgument = "", deploy_dir: DeployDirOption = paths.DEPLOY_DIR) -> None:
    """The S3 credentials Secret for ENV's namespace, from the S3_* and AWS_* environment variables."""
    from mlpipe.integrations import deploy

    typer.echo(deploy.dump([deploy.render_secret(env, deploy_dir=deploy_dir)]), nl=False)


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
    gpus: Annotated[int, typer.Option(min=0, help="GPUs the train task asks for (nvidia.com/gpu).")] = 1,
    cpu: Annotated[str, typer.Option(help="CPU request of the train task (Kubernetes quantity).")] = "4",
    memory: Annotated[str, typer.Option(help="Memory request of the train task.")] = "16Gi",
) -> None:
    """Compile dvc.yaml into a Kubeflow Pipeline: one task per stage, in dvc.yaml's order."""
    from mlpipe.integrations import kfp_pipeline

    resources = kfp_pipeline.Resources(gpus=gpus, cpu=cpu, memory=memory)
    kfp_pipeline.compile_pipeline(out, paths.DVC_YAML, image, resources)
    typer.echo(f"wrote {out}")


@kfp_app.command("run")
def kfp_run(
    local: Annotated[
        bool, typer.Option("--local", help="Run on this machine (KFP's subprocess runner).")
    ] = False,
    pipeline: Annotated[
        Path | None, typer.Option(help="A compiled pipeline to run (default: dvc.yaml compiled now).")
    ] = None,
) -> None:
    """Run the pipeline here with KFP's local runner: each task runs its DVC stage in this project."""
    from mlpipe.integrations import kfp_pipeline

    if not local:
        raise MlpipeError(
            "`mlpipe kfp run` runs on this machine only: pass --local (a cluster: `kfp submit`)"
        )
    kfp_pipeline.run_local(Path.cwd(), pipeline)


@kfp_app.command("submit")
def kfp_submit(
    pipeline: Annotated[Path, typer.Option(help="The compiled pipeline (`mlpipe kfp compile`).")] = Path(
        "pipeline.yaml"
    ),
    experiment: Annotated[str, typer.Option(help="KFP experiment the run belongs to.")] = "mlpipe",
    run_name: Annotated[str, typer.Option(help="The run's name in the KFP UI.")] = "mlpipe",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run to end.")] = 6 * 3600,
    poll: Annotated[float, typer.Option(help="Seconds between two looks at the run's state.")] = 10,
) -> None:
    """Submit the compiled pipeline to KFP_HOST (token: KFP_TOKEN), wait, fail if the run fails."""
    from mlpipe.integrations import kfp_pipeline

    host = os.environ.get("KFP_HOST")
    if not host:
        raise MlpipeError(
            "KFP_HOST is not set: export the KFP API's URL, e.g. https://kubeflow.example.com/pipeline"
        )
    if not pipeline.is_file():
        raise MlpipeError(
            f"{pipeline}: no compiled pipeline; run `mlpipe kfp compile --out {pipeline}` first"
        )
    run_id = kfp_pipeline.submit(
        pipeline, host, os.environ.get("KFP_TOKEN"), experiment, run_name, timeout_s=timeout, poll_s=poll
    )
    typer.echo(f"KFP run {run_id} succeeded")


def _pinned_params() -> Params:
    """params.yaml, with the numerics it asks for pinned (before anything imports torch)."""
    params = load_params()
    numerics.pin(params.train.numerics)
    return params


def _run_stage(run: Callable[[Params], None], params: Params) -> None:
    """Run a stage, with torch's numerics configured as params.yaml asks if the stage loaded torch.

    Each stage command calls `_pinned_params` before importing its module, which may import torch."""
    if "torch" in sys.modules:
        numerics.configure_torch(params.train.numerics)
    run(params)


def main() -> None:
    """The `mlpipe` command. Under `mlpipe tune`, a stage command runs in a child of the tuner's
    warm server (mlpipe.workflows.tuning.prefork) when one is set; user errors become one line
    on stderr and exit status 1."""
    status = prefork.delegate(sys.argv[1:], entry=f"{__name__}:main")
    if status is not None:
        sys.exit(status)
    try:
        app()
    except MlpipeError as e:
        print(f"mlpipe: error: {e}", file=sys.stderr)
        sys.exit(1)
