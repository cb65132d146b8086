"""dvc.yaml as a Kubeflow Pipeline: one KFP task per DVC stage, wired by dvc.yaml's own
dependencies (a stage that reads another's output runs after it), generated when compiled.
Each task runs `dvc repro --single-item STAGE` in the project, so KFP schedules and DVC decides
what is up to date; KFP's caching is off (DVC's run cache is the one cache). The compiled file
runs here (`run_local`, KFP's subprocess runner) or on a cluster (`submit`, the KFP API)."""

# No `from __future__ import annotations`: KFP reads the component's annotations as types.
import logging
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlpipe.core import paths
from mlpipe.core.errors import MlpipeError

DEFAULT_IMAGE = "registry.example.com/mlpipe/train:latest"
# A run on the cluster ends in one of these (KFP v2beta1 RuntimeState); the SDK's own wait
# does not know CANCELED, so `submit` polls itself.
FINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """A DVC stage as the pipeline runs it."""

    name: str
    cmd: str
    after: tuple[str, ...]


def read_stages(dvc_yaml: Path = paths.DVC_YAML) -> list[Stage]:
    """The stages of dvc.yaml in its order, each with the stages whose outputs it depends on."""
    try:
        stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise MlpipeError(f"{dvc_yaml}: cannot read its stages ({e})") from e

    def names(entries: list | None) -> set[str]:
        return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}

    produced = {
        out: name
        for name, stage in stages.items()
        for key in ("outs", "metrics", "plots")
        for out in names(stage.get(key))
    }
    return [
        Stage(
            name,
            stage["cmd"] if isinstance(stage["cmd"], str) else " && ".join(stage["cmd"]),
            tuple(sorted({produced[d] for d in names(stage.get("deps")) if d in produced} - {name})),
        )
        for name, stage in stages.items()
    ]


@dataclass(frozen=True)
class Resources:
    """What the training stage's task asks the cluster for (the other stages take the defaults)."""

    stage: str = "train"
    gpus: int = 1
    cpu: str = "4"
    memory: str = "16Gi"


def compile_pipeline(
    out: Path,
    dvc_yaml: Path = paths.DVC_YAML,
    image: str = DEFAULT_IMAGE,
    resources: Resources | None = Resources(),
) -> None:
    """Write the compiled pipeline (KFP IR YAML) for dvc.yaml's stages to ``out``; ``resources``
    go on the training stage's task (None: no requests, as for KFP's local runner)."""
    from kfp import compiler, dsl

    @dsl.component(base_image=image)
    def dvc_stage(stage: str, command: str, project_dir: str) -> None:
        """Run one DVC stage (`command` is what dvc.yaml runs, recorded for reading)."""
        import subprocess

        repro = ["dvc", "repro", "--single-item", stage]
        code = subprocess.run(repro, cwd=project_dir, check=False).returncode
        if code != 0:  # KFP reports the exception's line: it names the stage (DVC's output is above)
            raise RuntimeError(f"stage {stage}: `dvc repro --single-item {stage}` exited {code}")

    stages = read_stages(dvc_yaml)

    @dsl.pipeline(name="mlpipe", description="dvc.yaml's stages, one task each")
    def pipeline(project_dir: str = "/workspace") -> None:
        tasks: dict[str, dsl.PipelineTask] = {}
        for stage in stages:
            task = dvc_stage(stage=stage.name, command=stage.cmd, project_dir=project_dir)
            task.set_display_name(stage.name).set_caching_options(False)
            if resources is not None and stage.name == resources.stage:
                task.set_cpu_request(resources.cpu).set_memory_request(resources.memory)
                if resources.gpus:
                    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(resources.gpus)
            for upstream in stage.after:
                task.after(tasks[upstream])
            tasks[stage.name] = task

    compiler.Compiler().compile(pipeline, str(out))


def run_local(project_dir: Path, pipeline_file: Path | None = None) -> None:
    """Run the compiled pipeline (``pipeline_file``, else dvc.yaml compiled now) on this machine
    with KFP's subprocess runner, every task in this environment against ``project_dir``."""
    from kfp import components, local

    project_dir = project_dir.resolve()
    # KFP's own bookkeeping stays outside the project: untracked files there would make the
    # lineage record a dirty checkout.
    with tempfile.TemporaryDirectory(prefix="mlpipe-kfp-") as work:
        if pipeline_file is None:
            pipeline_file = Path(work) / "pipeline.yaml"
            compile_pipeline(pipeline_file, project_dir / paths.DVC_YAML, resources=None)
        pipeline = components.load_component_from_file(str(pipeline_file))
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(Path(work) / "outputs"),
            workspace_root=str(Path(work) / "workspace"),
            raise_on_error=True,
        )
        with warnings.catch_warnings():
            # the subprocess runner warns that the train image is not a Python image: here the
            # tasks run in this environment instead (the same requirements.lock)
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"kfp\.local\b")
            # ... and that display names (the stages' names) do not show in its log
            warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner")
            try:
                pipeline(project_dir=str(project_dir))
            except RuntimeError as e:
                # KFP's message is coloured and spread over lines: one plain line for the CLI
                reason = " ".join(ANSI_ESCAPE.sub("", str(e)).split())
                tasks = yaml.safe_load(pipeline_file.read_text(encoding="utf-8"))["root"]["dag"]["tasks"]
                failed = [
                    task["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"]
                    for name, task in tasks.items()
                    if f"'{name}'" in reason
                ]
                stage = f"stage {failed[0]} failed; " if failed else ""
                raise MlpipeError(f"kfp local run in {project_dir}: {stage}{reason}") from e


def submit(
    pipeline_file: Path,
    host: str,
    token: str | None,
    experiment: str = "mlpipe",
    run_name: str = "mlpipe",
    timeout_s: float = 6 * 3600,
    poll_s: float = 10,
) -> str:
    """Submit the compiled pipeline to the KFP API at ``host``, wait for the run to end and
    return its id; a run that does not succeed raises with the run's own error."""
    import kfp
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\b")
            client = kfp.Client(host=host, existing_token=token)
            started = client.create_run_from_pipeline_package(
                str(pipeline_file),
                run_name=run_name,
                experiment_name=experiment,
                enable_caching=False,
            )
        log.info("KFP run %s submitted to %s; waiting for it to end", started.run_id, host)
        deadline = time.monotonic() + timeout_s
        while (finished := client.get_run(started.run_id)).state not in FINAL_STATES:
            if time.monotonic() > deadline:
                raise MlpipeError(
                    f"KFP run {started.run_id} at {host} is still {finished.state} after {timeout_s:.0f} s"
                )
            time.sleep(poll_s)
    except urllib3.exceptions.HTTPError as e:
        raise MlpipeError(f"KFP_HOST {host} is unreachable ({e}); check the URL and the network") from e
    except ApiException as e:
        raise MlpipeError(
            f"KFP at {host} answered {e.status} {e.reason}: {(e.body or '').strip()[:300]}"
            + (" (is KFP_TOKEN set and valid?)" if e.status in (401, 403) else "")
        ) from e
    except TimeoutError as e:  # the SDK's health check gave up
        raise MlpipeError(f"KFP at {host} is not healthy ({e})") from e
    if finished.state != "SUCCEEDED":
        reason = finished.error.message if finished.error and finished.error.message else "no error given"
        raise MlpipeError(f"KFP run {started.run_id} at {host} ended {finished.state}: {reason}")
    return started.run_id
