"""The compiled Kubeflow Pipeline is dvc.yaml's DAG, generated (no Python to edit per stage)."""

from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from mlpipe.integrations.kfp_pipeline import Resources, compile_pipeline, read_stages
from tests.conftest import REPO_ROOT, require


@pytest.fixture(autouse=True)
def _kfp() -> None:
    require(find_spec("kfp") is not None, "the kfp SDK (the `kfp` extra)")


def compiled_dag(dvc_yaml: Path, tmp_path: Path) -> dict[str, tuple[str, list[str]]]:
    """task -> (its stage's command, the tasks it runs after), from the compiled IR."""
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(out, dvc_yaml)
    tasks = yaml.safe_load(out.read_text())["root"]["dag"]["tasks"]
    return {
        t["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"]: (
            t["inputs"]["parameters"]["command"]["runtimeValue"]["constant"],
            sorted(
                tasks[d]["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"]
                for d in t.get("dependentTasks", [])
            ),
        )
        for t in tasks.values()
    }


def test_compiled_dag_equals_dvc_yaml(tmp_path: Path) -> None:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert compiled_dag(REPO_ROOT / "dvc.yaml", tmp_path) == {
        "prepare": (dvc["prepare"]["cmd"], []),
        "train": (dvc["train"]["cmd"], ["prepare"]),
        "evaluate": (dvc["evaluate"]["cmd"], ["prepare", "train"]),
        "package": (dvc["package"]["cmd"], ["evaluate", "prepare", "train"]),
    }
    assert [s.name for s in read_stages(REPO_ROOT / "dvc.yaml")] == list(dvc)


def test_a_stage_added_to_dvc_yaml_appears_in_the_compiled_pipeline(tmp_path: Path) -> None:
    copy = tmp_path / "dvc.yaml"
    shutil.copy(REPO_ROOT / "dvc.yaml", copy)
    dvc = yaml.safe_load(copy.read_text())
    dvc["stages"]["summarise"] = {"cmd": "python summarise.py", "deps": ["reports/metrics.json"]}
    copy.write_text(yaml.safe_dump(dvc, sort_keys=False))
    assert compiled_dag(copy, tmp_path)["summarise"] == ("python summarise.py", ["evaluate"])


def executor_resources(pipeline_file: Path) -> dict[str, dict]:
    """stage -> the container resources its task's executor asks for."""
    ir = yaml.safe_load(pipeline_file.read_text())
    executors = ir["deploymentSpec"]["executors"]
    tasks = ir["root"]["dag"]["tasks"]
    by_component = {
        c: spec["executorLabel"] for c, spec in ir["components"].items() if "executorLabel" in spec
    }
    return {
        t["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"]: executors[
            by_component[t["componentRef"]["name"]]
        ]["container"].get("resources", {})
        for t in tasks.values()
    }


def test_the_train_task_asks_for_gpus_cpu_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(out, REPO_ROOT / "dvc.yaml", resources=Resources(gpus=2, cpu="8", memory="32Gi"))
    resources = executor_resources(out)
    train = resources.pop("train")
    assert train["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["accelerator"]["resourceCount"] == "2"
    assert (train["resourceCpuRequest"], train["resourceMemoryRequest"]) == ("8", "32Gi")
    assert all(r == {} for r in resources.values()), resources


def test_without_resources_no_task_asks_for_any(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(out, REPO_ROOT / "dvc.yaml", resources=None)
    assert all(r == {} for r in executor_resources(out).values())
