"""Training-loop benchmark (`make bench-fit`, i.e. `python -m benchmarks.fit`): `train.fit`
against a bare PyTorch loop, timed in the same process.

Every loop trains the same model (mlpipe.ml.model.build_model, params.yaml's model) on the same
train split (params.yaml's data, prepared into a temporary directory) with the same optimiser
(AdamW), one-cycle schedule, batch order and seeds, under the numerics params.yaml pins. The
bare loops are what one writes by hand: the training steps, then, in the second, the same
per-epoch validation pass as `fit` (loss and accuracy on the val split); no progress bar, no
running metrics, no tracking. `fit` is consumed as the train stage consumes it, minus the
logging and MLflow.

After one untimed run of each, --rounds rounds time one run of each, in an order that alternates
from round to round; throughput = training examples × epochs / wall seconds, median over the
rounds. Every run must end with the same weights; with params.yaml's values, `fit`'s
checkpoint must have the bytes dvc.lock records for models/model.pt.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlpipe.core import numerics, paths
from mlpipe.core.params import Params, load_params

if TYPE_CHECKING:
    import torch

    from mlpipe.ml.train import Tensors

REPO_ROOT = Path(__file__).resolve().parents[1]


def committed_checkpoint_md5() -> str:
    """The md5 dvc.lock records for the train stage's checkpoint."""
    lock = yaml.safe_load((REPO_ROOT / "dvc.lock").read_text())
    (out,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == paths.CHECKPOINT_FILE.as_posix()]
    return out["md5"]


def bare_loop(
    model: torch.nn.Module, train: Tensors, val: Tensors | None, params: Params, generator: torch.Generator
) -> tuple[float, float] | None:
    """The plain PyTorch loop: shuffled mini-batches, AdamW, one-cycle; with ``val``, a validation
    pass after every epoch, returning the last one's (loss, accuracy)."""
    import torch
    from torch import nn

    from mlpipe.ml.train import VALIDATION_BATCH_SIZE, optimisation

    settings = params.train
    steps_per_epoch = -(-len(train.labels) // settings.batch_size)
    optimizer, schedule = optimisation(model, settings, steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    for _ in range(settings.epochs):
        model.train()
        for batch in torch.randperm(len(train.labels), generator=generator).split(settings.batch_size):
            if len(batch) < 2:  # as in fit: batch norm cannot train on one example
                schedule.step()
                continue
            loss = loss_fn(model(train.inputs[batch]), train.labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if val is not None:
            model.eval()
            with torch.no_grad():
                batch_size = max(settings.batch_size, VALIDATION_BATCH_SIZE)
                logits = torch.cat([model(inputs) for inputs in val.inputs.split(batch_size)])
                scores = (
                    float(loss_fn(logits, val.labels)),
                    float((logits.argmax(1) == val.labels).float().mean()),
                )
    return scores if val is not None else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="timed runs of each loop")
    parser.add_argument(
        "--numerics", choices=("portable", "native"), help="override params.yaml's train.numerics"
    )
    args = parser.parse_args()

    params = load_params(REPO_ROOT / paths.PARAMS_FILE)
    if args.numerics:
        train_params = params.train.model_copy(update={"numerics": args.numerics})
        params = params.model_copy(update={"train": train_params})
    numerics.pin(params.train.numerics)  # before torch loads, as the CLI does
    import torch
    from benchmarks.storage import machine, working_directory

    from mlpipe.contracts.data import read_schema, read_split
    from mlpipe.contracts.preprocessing import Preprocessing
    from mlpipe.ml import prepare
    from mlpipe.ml.model import Checkpoint, build_model, save_checkpoint
    from mlpipe.ml.train import Tensors, fit, seed_everything

    numerics.configure_torch(params.train.numerics)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp, working_directory(Path(tmp)):
        prepare.run(params)
        schema = read_schema()
        preprocessing = Preprocessing(schema.pixel_max, schema.pixel_mean, schema.pixel_std)
        train = Tensors.of(read_split("train", schema=schema), preprocessing, device)
        val = Tensors.of(read_split("val", schema=schema), preprocessing, device)

        def fresh() -> tuple[torch.nn.Module, torch.Generator]:
            generator = seed_everything(params.train.seed, device, params.train.deterministic)
            return build_model(params.model, schema.array_shape, len(schema.classes)).to(device), generator

        def run_fit(model: torch.nn.Module, generator: torch.Generator) -> None:
            for _ in fit(model, train, val, params.train, device, generator):
                pass

        loops: dict[str, Callable[[torch.nn.Module, torch.Generator], Any]] = {
            "fit": run_fit,
            "bare loop, with validation": lambda m, g: bare_loop(m, train, val, params, g),
            "bare loop, training steps only": lambda m, g: bare_loop(m, train, None, params, g),
        }
        seconds: dict[str, list[float]] = {name: [] for name in loops}
        weights: dict[str, dict[str, torch.Tensor]] = {}
        for round_number in range(args.rounds + 1):
            order = list(loops) if round_number % 2 else list(reversed(loops))
            for name in order:
                model, generator = fresh()
                started = time.perf_counter()
                loops[name](model, generator)
                elapsed = time.perf_counter() - started
                if round_number:  # round 0 warms up
                    seconds[name].append(elapsed)
                weights[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        checkpoint = Path(tmp) / "model.pt"
        save_checkpoint(
            checkpoint,
            Checkpoint(params.model, schema.image_shape, schema.classes, preprocessing, weights["fit"]),
        )
        md5 = hashlib.md5(checkpoint.read_bytes()).hexdigest()  # noqa: S324 (dvc's own digest)

    for name, state in weights.items():
        if any(not torch.equal(state[k], weights["fit"][k]) for k in state):
            raise SystemExit(f"{name} ended with other weights than fit: not the same training")
    examples = params.train.epochs * len(train.labels)
    print(f"Machine: {machine()}, torch {torch.__version__}, train.numerics: {params.train.numerics}")
    print(
        f"{params.data.dataset}: {len(train.labels)} train / {len(val.labels)} val images, "
        f"{params.train.epochs} epochs, batch {params.train.batch_size}; {args.rounds} rounds\n"
    )
    fit_rate = examples / statistics.median(seconds["fit"])
    print("| loop | median | min | max | examples/s | fit's throughput / loop's |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, times in seconds.items():
        rate = examples / statistics.median(times)
        print(
            f"| {name} | {statistics.median(times):.3f} s | {min(times):.3f} s | {max(times):.3f} s "
            f"| {rate:,.0f} | {fit_rate / rate:.3f} |"
        )
    expected = committed_checkpoint_md5()
    same = "the same as" if md5 == expected else "NOT the same as"
    committed = load_params(REPO_ROOT / paths.PARAMS_FILE) == params
    print(
        f"\nfit's checkpoint md5 {md5}: {same} dvc.lock's models/model.pt ({expected})"
        + ("" if committed else "; other params than params.yaml's, so no need to be")
    )


if __name__ == "__main__":
    main()
