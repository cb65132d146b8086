"""dvc.yaml as a Kubeflow Pipeline: one KFP task per DVC stage, wired by dvc.yaml's own
dependencies (a stage that reads another's output runs after it), generated when compiled.
Each task runs `dvc repro --single-item STAGE` in the project, so KFP schedules and DVC decides
what is up to date; KFP's caching is off (DVC's run cache is the one cache)."""

# No `from __future__ import annotations`: KFP reads the component's annotations as types.
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlpipe import paths
from mlpipe.errors import MlpipeError

DEFAULT_IMAGE = "registry.example.com/mlpipe/train:latest"


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


def compile_pipeline(out: Path, dvc_yaml: Path = paths.DVC_YAML, image: str = DEFAULT_IMAGE) -> None:
    """Write the compiled pipeline (KFP IR YAML) for dvc.yaml's stages to ``out``."""
    from kfp import compiler, dsl

    @dsl.component(base_image=image)
    def dvc_stage(stage: str, command: str, project_dir: str) -> None:
        """Run one DVC stage (`command` is what dvc.yaml runs, recorded for reading)."""
        import subprocess

        subprocess.run(["dvc", "repro", "--single-item", stage], cwd=project_dir, check=True)

    stages = read_stages(dvc_yaml)

    @dsl.pipeline(name="mlpipe", description="dvc.yaml's stages, one task each")
    def pipeline(project_dir: str = "/workspace") -> None:
        tasks: dict[str, dsl.PipelineTask] = {}
        for stage in stages:
            task = dvc_stage(stage=stage.name, command=stage.cmd, project_dir=project_dir)
            task.set_display_name(stage.name).set_caching_options(False)
            for upstream in stage.after:
                task.after(tasks[upstream])
            tasks[stage.name] = task

    compiler.Compiler().compile(pipeline, str(out))
