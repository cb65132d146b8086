"""Derive experiment-v1beta1.schema.json from Katib's published API (from a clone of kubeflow/katib,
bare or not: `python derive.py /path/to/katib > experiment-v1beta1.schema.json`).

Source: api/openapi-spec/swagger.json (generated from pkg/apis/controller/*/v1beta1), reduced to
what `v1beta1.Experiment` references. The OpenAPI file types enums as plain strings; their
values are the Go constants of pkg/apis/controller/{common,experiments}/v1beta1/*_types.go,
added here as `enum`. Katib's own objects are closed (unknown keys are errors), because the
CRD preserves unknown fields and would accept a misspelt key silently.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = "v1beta1.Experiment"
ENUMS = {
    ("v1beta1.ObjectiveSpec", "type"): ["minimize", "maximize"],
    ("v1beta1.MetricStrategy", "value"): ["min", "max", "latest"],
    ("v1beta1.ParameterSpec", "parameterType"): ["double", "int", "discrete", "categorical"],
    ("v1beta1.FeasibleSpace", "distribution"): ["uniform", "logUniform", "normal", "logNormal"],
    ("v1beta1.CollectorSpec", "kind"): [
        "StdOut",
        "File",
        "TensorFlowEvent",
        "PrometheusMetric",
        "Custom",
        "Push",
    ],
    ("v1beta1.ExperimentSpec", "resumePolicy"): ["Never", "LongRunning", "FromVolume"],
}
# What Katib's validating webhook requires (pkg/webhook/v1beta1/experiment/validator/validator.go).
REQUIRED = {
    "v1beta1.ObjectiveSpec": ["type", "objectiveMetricName"],
    "v1beta1.AlgorithmSpec": ["algorithmName"],
    "v1beta1.ParameterSpec": ["name", "parameterType", "feasibleSpace"],
    "v1beta1.TrialParameterSpec": ["name", "reference"],
    "v1beta1.ExperimentSpec": ["objective", "algorithm", "parameters", "trialTemplate"],
}


def references(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else []
        return found + [r for value in node.values() for r in references(value)]
    if isinstance(node, list):
        return [r for value in node for r in references(value)]
    return []


def main(katib: Path) -> None:
    commit = subprocess.run(
        ["git", "-C", str(katib), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    spec = subprocess.run(
        ["git", "-C", str(katib), "show", "HEAD:api/openapi-spec/swagger.json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    schemas = json.loads(spec)["components"]["schemas"]
    kept, todo = {}, [ROOT]
    while todo:
        name = todo.pop()
        if name not in kept:
            kept[name] = schemas[name]
            todo += references(schemas[name])
    for (name, field), values in ENUMS.items():
        kept[name]["properties"][field]["enum"] = values
    for name, fields in REQUIRED.items():
        kept[name]["required"] = fields
    for name, schema in kept.items():
        if name.startswith("v1beta1.") and "properties" in schema:
            schema["additionalProperties"] = False
    document = {
        "$comment": f"kubeflow/katib@{commit} api/openapi-spec/swagger.json (see derive.py)",
        "$ref": f"#/components/schemas/{ROOT}",
        "components": {"schemas": dict(sorted(kept.items()))},
    }
    json.dump(document, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
