"""copier's task: the answers of `copier copy` written into the files of the project it made.

The project files hold no Jinja, so this repository stays a working project; copier copies them
as they are, then runs ``python -m mlpipe.integrations.template`` (copier.yml's ``_tasks``) in the
new project, which replaces the demo's names and choices with the answers: params.yaml (a YAML
round trip that keeps its comments), the DVC remotes (``dvc remote add``), the Kubernetes
namespaces and the model name in deploy/ and the docs, the tuning study's name and, for a table,
its search space, the README's title.

copier runs the task on fresh copies of the template only: after ``copier copy``, and during
``copier update`` on the old and on the new template version (rendered with the same answers)
before it merges their difference into the project. So every edit starts from the template's
own text, and the same answers give the same files. It runs before the project has an
environment, with copier's interpreter, and needs only what DVC brings (ruamel.yaml, pydantic).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from mlpipe.core import atomic, vcs
from mlpipe.core.errors import MlpipeError
from mlpipe.core.params import TABLE_DATASETS, TABLE_KEYS, ModelParams, Params, validate_config
from mlpipe.core.paths import PARAMS_FILE, TUNE_FILE

# The demo's own names, as this repository ships them.
DEMO_PROJECT_NAME = "mlpipe"
DEMO_MODEL_NAME = "mlpipe-classifier"
DEMO_STUDY = "digits-cnn"
# Where the demo's names stand for the project's own. The tests keep their fixed model name
# (tests/conftest.py MODEL_NAME) but check deploy/'s namespaces.
MODEL_NAME_FILES = (
    "README.md",
    "deploy/monitoring/podmonitor.yaml",
    "docs/serving.md",
    "docs/storage.md",
    "src/mlpipe/core/params.py",
)
NAMESPACE_FILES = (
    "deploy/monitoring/podmonitor.yaml",
    "deploy/monitoring/prometheusrule.yaml",
    "deploy/overlays/production/kustomization.yaml",
    "deploy/overlays/staging/kustomization.yaml",
    "docs/serving.md",
    "tests/data/deploy/canary.yaml",
    "tests/data/deploy/production.yaml",
    "tests/data/deploy/staging.yaml",
    "tests/unit/test_manifests.py",
)
ENVIRONMENTS = ("production", "staging")
# the folder beside the project that holds the local DVC remotes
STORAGE_FILES = ("README.md", "docs/storage.md", "mk/storage.mk")
COMPOSE_FILE = "compose.yaml"
README = "README.md"
# Where the docs say to set the tracking server: the text its URI is added to.
TRACKING_MENTIONS = {
    README: "For a team server (PostgreSQL + S3 artifacts) set `MLFLOW_TRACKING_URI`",
    "docs/ci.md": "the team MLflow server: runs, the model registry and its aliases",
}
# The README's section on making a project from the template, and what a made project says instead.
TEMPLATE_SECTION = "## Make a project from this template"
MADE_PROJECT_SECTION = """\
## Updating from the template

This project was made from the mlpipe template with [copier](https://copier.readthedocs.io);
`.copier-answers.yml` records the answers and the template's commit. To bring in the
template's later commits, from a clean git tree (copier is in `.venv`):

```bash
copier update --trust --defaults        # or --vcs-ref <tag or commit>; --data <question>=<answer> changes one
```

copier renders the old and the new template version with the same answers and merges their
difference into this project, keeping your own edits; where both changed the same lines it
leaves conflict markers to resolve.
"""
# README "Layout": the template's line, and the made project's
LAYOUT_LINES = (
    "copier.yml                        making a project from this template (copier copy), and updating it\n",
    ".copier-answers.yml               the answers this project was made with (copier update reads them)\n",
)
DATA_REMOTE, MODELS_REMOTE = "data", "models"
# A table's MLP has no model.width (its conv blocks' channels) to search: tune.yaml searches its
# units in that place.
IMAGE_ONLY_SEARCH = "model.width"
TABLE_SEARCH = ("model.hidden", {"type": "int", "low": 16, "high": 128, "step": 16})
# a DNS label that leaves room for "-production" (a Kubernetes namespace has 63 characters at most)
PROJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?")


class TemplateError(MlpipeError):
    """An answer cannot go into the project, or the template lacks the text the task edits."""


@dataclass(frozen=True)
class Answers:
    """copier's answers, named as copier.yml's questions."""

    project_name: str
    model_name: str
    dataset: str
    data_source: str
    data_remote: str
    models_remote: str
    # idx only: the class names, comma-separated
    classes: str = ""
    # table only: the label column
    target: str = ""
    # empty: none yet (runs go to the local store until MLFLOW_TRACKING_URI is set)
    mlflow_tracking_uri: str = ""

    def class_names(self) -> list[str] | None:
        """``classes`` as data.classes holds them; None when not given."""
        names = [name.strip() for name in self.classes.split(",") if name.strip()]
        return names or None

    @property
    def is_table(self) -> bool:
        """Whether the project trains on a table (else on images)."""
        return self.dataset in TABLE_DATASETS

    def check(self) -> None:
        """Raise TemplateError unless every answer can go where apply() puts it."""
        if not PROJECT_NAME.fullmatch(self.project_name):
            raise TemplateError(
                f"project_name: {self.project_name!r} is not lowercase letters, digits and inner '-', "
                "52 at most (it names the Kubernetes namespaces <project_name>-production and -staging)"
            )
        # the params schema judges the rest: a model name KServe and MLflow accept, a dataset
        # the pipeline reads, a source that suits it
        data: dict[str, object] = {"dataset": self.dataset, "source": self.data_source}
        if self.class_names():
            data["classes"] = self.class_names()
        if self.target:
            data["target"] = self.target
        validate_config(
            Params, {"data": data, "package": {"model_name": self.model_name}}, Path("answers"), TemplateError
        )
        remotes = {"data_remote": self.data_remote, "models_remote": self.models_remote}
        for question, url in remotes.items():
            if not url:
                raise TemplateError(f"{question}: empty; give a DVC remote's URL or a directory")
        for question, url in {**remotes, "mlflow_tracking_uri": self.mlflow_tracking_uri}.items():
            if urlsplit(url).password is not None:
                raise TemplateError(
                    f"{question}: has a password in it; credentials never go in the repository "
                    "(docs/storage.md says where they go)"
                )


def replacements(answers: Answers) -> dict[str, list[tuple[str, str]]]:
    """The files apply() edits as text, each with its (the demo's text, the project's) pairs."""
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name in MODEL_NAME_FILES:
        pairs[name].append((DEMO_MODEL_NAME, answers.model_name))
    for name in NAMESPACE_FILES:
        pairs[name] += [
            (f"{DEMO_PROJECT_NAME}-{env}", f"{answers.project_name}-{env}") for env in ENVIRONMENTS
        ]
    for name in STORAGE_FILES:
        pairs[name].append((f"../{DEMO_PROJECT_NAME}-storage", f"../{answers.project_name}-storage"))
    pairs[README].append(LAYOUT_LINES)
    # compose's project name: its containers and volumes
    pairs[COMPOSE_FILE].append((f"\nname: {DEMO_PROJECT_NAME}\n", f"\nname: {answers.project_name}\n"))
    # the tuning study, named after the demo's data and model
    pairs[TUNE_FILE.as_posix()].append((f"\nstudy: {DEMO_STUDY}\n", f"\nstudy: {answers.project_name}\n"))
    if answers.mlflow_tracking_uri:
        for name, mention in TRACKING_MENTIONS.items():
            pairs[name].append((mention, f"{mention} (this project's: `{answers.mlflow_tracking_uri}`)"))
    return pairs


def apply(answers: Answers, root: Path = Path()) -> None:
    """Write ``answers`` into the fresh copy of the template at ``root``."""
    answers.check()
    edited: dict[str, str] = {}
    for name, pairs in replacements(answers).items():
        text = _read(root / name)
        if not any(old in text for old, _ in pairs):
            shown = ", ".join(repr(old.strip()) for old, _ in pairs)
            raise TemplateError(
                f"{name}: none of {shown} to replace; mlpipe/integrations/template.py lists it"
            )
        for old, new in pairs:
            text = text.replace(old, new)
        edited[name] = text
    edited[README] = _readme(edited[README], answers.project_name)
    edited[PARAMS_FILE.as_posix()] = params_text(_read(root / PARAMS_FILE), answers)
    edited[TUNE_FILE.as_posix()] = tune_text(edited[TUNE_FILE.as_posix()], answers)
    for name, text in edited.items():
        atomic.write_text(root / name, text)
    # DVC writes its own config: a local path relative to .dvc/, the demo's whole section replaced
    vcs.dvc("remote", "add", "--force", "--default", DATA_REMOTE, answers.data_remote, cwd=root)
    vcs.dvc("remote", "add", "--force", MODELS_REMOTE, answers.models_remote, cwd=root)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise TemplateError(f"{path}: cannot read ({e}); mlpipe/integrations/template.py edits it") from e


def _readme(text: str, project_name: str) -> str:
    """The README with the project's title, and the template's section on making a project
    replaced by the made project's on updating it."""
    title = f"# {DEMO_PROJECT_NAME}\n"
    if not text.startswith(title):
        raise TemplateError(f"{README}: does not start with {title.strip()!r}")
    start = text.find(f"\n{TEMPLATE_SECTION}\n")
    if start < 0:
        raise TemplateError(f"{README}: no section {TEMPLATE_SECTION!r}")
    following = re.compile(r"^## ", re.MULTILINE).search(text, start + len(TEMPLATE_SECTION) + 1)
    end = following.start() if following else len(text)
    made = f"{text[: start + 1]}{MADE_PROJECT_SECTION}\n{text[end:]}"
    return f"# {project_name}\n" + made.removeprefix(title)


def params_text(text: str, answers: Answers) -> str:
    """params.yaml with the answers in it, every comment and the layout kept; the keys of other
    kinds of data set to null, so the file is valid for the answers whatever the template's own
    params.yaml selects."""
    yaml = YAML()
    # null as the file spells it (ruamel would leave the value empty)
    yaml.representer.add_representer(type(None), _null)
    params = yaml.load(text)
    for section in ("data", "model", "package"):
        if not isinstance(params, dict) or not isinstance(params.get(section), dict):
            raise TemplateError(f"{PARAMS_FILE}: no section {section!r}")
    data, model = params["data"], params["model"]
    data["dataset"] = answers.dataset
    data["source"] = answers.data_source
    if classes := answers.class_names():
        listed = CommentedSeq(classes)
        listed.fa.set_flow_style()
        _put(data, "classes", listed, after="source")
    elif data.get("classes") is not None:
        data["classes"] = None
    if answers.target:
        # under params.yaml's comments on the table keys, which follow `classes`
        _put(data, "target", answers.target, after="classes" if "classes" in data else "source")
    not_applying = ("channels", "image_size") if answers.is_table else TABLE_KEYS
    for key in not_applying:
        if data.get(key) is not None:
            data[key] = None
    if answers.is_table:
        model["width"] = None
    elif model.get("width") is None:
        model["width"] = ModelParams.model_fields["width"].default
    params["package"]["model_name"] = answers.model_name
    made = _dumped(yaml, params)
    validate_config(Params, YAML(typ="safe").load(made), PARAMS_FILE, TemplateError)
    return made


def tune_text(text: str, answers: Answers) -> str:
    """tune.yaml with, for a table, a search space its MLP takes (model.hidden where images
    search model.width), every comment kept."""
    if not answers.is_table:
        return text
    yaml = YAML()
    space = yaml.load(text)
    searched = space.get("params") if isinstance(space, dict) else None
    if not isinstance(searched, CommentedMap):
        raise TemplateError(f"{TUNE_FILE}: no mapping 'params' (the search space)")
    if IMAGE_ONLY_SEARCH not in searched:
        return text
    key, distribution = TABLE_SEARCH
    if key in searched:  # the MLP's units searched already: the conv channels only go
        del searched[IMAGE_ONLY_SEARCH]
        return _dumped(yaml, space)
    # the same entry, its comments kept, renamed and given the table's range
    entry = searched[IMAGE_ONLY_SEARCH]
    for name in [name for name in entry if name not in distribution]:
        del entry[name]
    entry.update(distribution)
    searched.insert(list(searched).index(IMAGE_ONLY_SEARCH), key, entry)
    del searched[IMAGE_ONLY_SEARCH]
    return _dumped(yaml, space)


def _dumped(yaml: YAML, document: Any) -> str:
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def _put(section: Any, key: str, value: object, after: str) -> None:
    """Set ``key`` in a params.yaml section, a new key after the key ``after``."""
    if key in section:
        section[key] = value
    else:
        section.insert(list(section).index(after) + 1, key, value)


def _null(representer: Any, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def main(argv: Sequence[str] | None = None) -> None:
    """copier's task: ``--<question> <answer>`` for each question (dashes for underscores).
    An error is one line on stderr and exit status 1."""
    parser = argparse.ArgumentParser(
        prog="python -m mlpipe.integrations.template", description="Write copier's answers into this project."
    )
    for field in dataclasses.fields(Answers):
        required = field.default is dataclasses.MISSING
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            required=required,
            default=None if required else field.default,
        )
    try:
        apply(Answers(**vars(parser.parse_args(argv))))
    except MlpipeError as e:
        print(f"mlpipe: error: {e}", file=sys.stderr)
        raise SystemExit(1) from e


if __name__ == "__main__":
    main()
