"""Stage `train`: fit the model (mlpipe.ml.model.build_model) on the prepared train split,
validating on val every epoch."""

from __future__ import annotations

import collections
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mlpipe.contracts.data import LabeledImages, Schema, read_any_schema, read_examples
from mlpipe.contracts.preprocessing import (
    AnyPreprocessing,
    TablePreprocessing,
    model_inputs,
    preprocessing_of,
)
from mlpipe.contracts.table import Table, TableSchema
from mlpipe.core import atomic, distributed, lineage, paths, tables
from mlpipe.core.errors import MlpipeError
from mlpipe.core.params import Params, TrainParams
from mlpipe.ml.model import Checkpoint, build_model, predict_logits, save_checkpoint
from mlpipe.tracking import runs
from mlpipe.tracking.trials import report_epoch, trial_tags

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
TRAIN_OUTPUTS = (paths.TRAIN_HISTORY_FILE, paths.TRAIN_METRICS_FILE, paths.CHECKPOINT_FILE)


@dataclass(frozen=True)
class Tensors:
    """A split on the training device: normalised inputs and labels."""

    inputs: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(
        cls, split: LabeledImages | Table, preprocessing: AnyPreprocessing, device: torch.device
    ) -> Tensors:
        return cls(
            model_inputs(split, preprocessing).to(device).contiguous(),
            torch.from_numpy(split.labels).to(device),
        )


def select_device(requested: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; an explicit `cuda` without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise MlpipeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int, device: torch.device, deterministic: bool) -> torch.Generator:
    """Seed every RNG and choose the kernels: deterministic ones (always on the CPU; on CUDA
    with ``train.deterministic``) or cuDNN's autotuned fastest."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu" or deterministic:
        # cuBLAS needs a fixed workspace for deterministic results; read at its first call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True
    return torch.Generator().manual_seed(seed)


# Validation is forward-only under no_grad, so its batch can be far larger than the training
# batch: fewer, larger calls are faster, and batch norm in eval mode makes each example's
# logits independent of its batch. 1,024 small images fit in memory on any device this runs on.
VALIDATION_BATCH_SIZE = 1024


@dataclass(frozen=True)
class Epoch:
    """One epoch of training: mean loss and accuracy over the batches (all ranks), the
    validation split's loss and accuracy afterwards, and the learning rate at its end."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float

    def metrics(self) -> dict[str, float]:
        """Every measured value, by name (the epoch is the step, not a metric)."""
        return {name: value for name, value in asdict(self).items() if name != "epoch"}


def _score(model: nn.Module, data: Tensors, loss_fn: nn.Module, batch_size: int) -> tuple[float, float]:
    logits = predict_logits(model, data.inputs, batch_size)
    loss = float(loss_fn(logits, data.labels))
    accuracy = float((logits.argmax(1) == data.labels).float().mean())
    return loss, accuracy


def optimisation(
    model: nn.Module, params: TrainParams, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and its one-cycle schedule: warm-up to ``lr`` over ``warmup_fraction`` of the
    steps, then cosine annealing; the schedule steps once per batch."""
    # The fused kernel takes its square roots from the CPU's correctly rounded instruction; the
    # default kernel calls oneMKL's vector sqrt, whose result depends on the CPU (mlpipe.core.numerics).
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=True
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=params.lr,
        total_steps=params.epochs * steps_per_epoch,
        pct_start=params.warmup_fraction,
    )
    return optimizer, schedule


def fit(
    model: nn.Module,
    train: Tensors,
    val: Tensors,
    params: TrainParams,
    device: torch.device,
    generator: torch.Generator,
    world: distributed.World = distributed.SINGLE_PROCESS,
) -> Iterator[Epoch]:
    """The training loop: shuffled mini-batches, AdamW with a one-cycle learning-rate schedule
    (``optimisation``); yields each epoch as it ends. Under torchrun `train` is this rank's
    shard and the records cover all ranks."""
    batch_size = world.local_batch_size(params.batch_size)
    optimizer, schedule = optimisation(model, params, steps_per_epoch=-(-len(train.labels) // batch_size))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    amp = params.amp and device.type == "cuda"
    wrapped = world.wrap(model, device)
    step_model = torch.compile(wrapped) if params.compile else wrapped
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = torch.randperm(len(train.labels), generator=generator).to(device)
        seen, loss_sum, correct = 0, torch.zeros((), device=device), torch.zeros((), device=device)
        batches = tqdm(
            order.split(batch_size),
            desc=f"epoch {epoch}/{params.epochs}",
            unit="batch",
            leave=False,
            disable=None,
        )
        for batch in batches:
            if len(batch) < 2:  # batch norm cannot train on a single example
                schedule.step()
                continue
            inputs, labels = train.inputs[batch], train.labels[batch]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = step_model(inputs)
                loss = loss_fn(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(batch)
            loss_sum += loss.detach() * len(batch)
            correct += (logits.argmax(1) == labels).sum()
        seen_all, loss_sum, correct = world.sum(torch.tensor(float(seen), device=device), loss_sum, correct)
        seen = int(seen_all)
        val_loss, val_accuracy = _score(model, val, loss_fn, max(params.batch_size, VALIDATION_BATCH_SIZE))
        yield Epoch(
            epoch=epoch,
            train_loss=float(loss_sum) / max(seen, 1),
            train_accuracy=float(correct) / max(seen, 1),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=float(schedule.get_last_lr()[0]),
        )


def _history_csv(history: list[Epoch]) -> str:
    rows = (
        [str(record.epoch)] + [f"{getattr(record, column):.6g}" for column in HISTORY_COLUMNS[1:]]
        for record in history
    )
    return tables.to_csv(HISTORY_COLUMNS, rows)


def run(params: Params) -> None:
    """Train on data/prepared/ and write the checkpoint, the history and the final metrics;
    under torchrun, as one rank of a data-parallel run (see mlpipe.core.distributed)."""
    with distributed.process_group(select_device(params.train.device)) as (world, device):
        _run(params, world, device)


def _run(params: Params, world: distributed.World, device: torch.device) -> None:
    schema = read_any_schema()
    preprocessing = preprocessing_of(schema)
    train_split = read_examples(paths.TRAIN_SPLIT, schema)
    val_split = read_examples(paths.VAL_SPLIT, schema)
    if world.is_main:  # rank 0 alone tracks and writes outputs
        # Check the tracking server before spending time on training.
        mlflow_client = runs.client()
        runs.close_abandoned_runs(mlflow_client)
        origin = lineage.current(params.digest("data", "model", "train"))

    generator = seed_everything(params.train.seed + world.rank, device, params.train.deterministic)
    input_shape = (
        schema.array_shape if isinstance(schema, Schema) else (TablePreprocessing(schema.columns).width,)
    )
    model = build_model(params.model, input_shape, len(schema.classes)).to(device)
    train_data = Tensors.of(train_split, preprocessing, device)
    train_data = Tensors(*world.shard(train_data.inputs, train_data.labels))
    val_data = Tensors.of(val_split, preprocessing, device)
    log.info(
        "training on %s: %d train / %d val examples, %d parameters",
        device,
        len(train_split),
        len(val_split),
        sum(p.numel() for p in model.parameters()),
    )
    epochs = fit(model, train_data, val_data, params.train, device, generator, world)
    if not world.is_main:
        collections.deque(epochs, maxlen=0)  # train in step with rank 0; it records the run
        return

    run_name = origin.dvc_experiment or f"train-{origin.git_commit[:8]}"
    tags = runs.lineage_tags(origin) | trial_tags()
    with runs.run(mlflow_client, run_name=run_name, tags=tags) as mlflow_run:
        mlflow_run.log_params(runs.flatten(params.model_dump(include={"data", "model", "train"})))
        mlflow_run.log_dataset(origin.inputs.data_hash, "training")
        epoch_log = runs.EpochLog(mlflow_run)
        started = time.perf_counter()
        history = []
        for record in epochs:
            log.info(
                "epoch %d: train_loss %.4f val_loss %.4f val_accuracy %.4f",
                record.epoch,
                record.train_loss,
                record.val_loss,
                record.val_accuracy,
            )
            epoch_log.add(record.epoch, record.metrics())
            report_epoch(record.epoch, record.metrics())  # a no-op unless `mlpipe tune` runs a trial
            history.append(record)
        epoch_log.flush()
        seconds = time.perf_counter() - started

        checkpoint = Checkpoint(
            params.model,
            () if isinstance(schema, TableSchema) else schema.image_shape,
            schema.classes,
            preprocessing,
            {k: v.cpu() for k, v in model.state_dict().items()},
        )
        final = {k: round(v, 6) for k, v in history[-1].metrics().items() if k != "lr"}
        # The outputs move into place together, and only once MLflow holds them: a tracking
        # failure leaves the previous outputs.
        with atomic.replace_files(TRAIN_OUTPUTS) as staged:
            save_checkpoint(staged[paths.CHECKPOINT_FILE], checkpoint)
            atomic.write_text(staged[paths.TRAIN_HISTORY_FILE], _history_csv(history))
            atomic.write_json(staged[paths.TRAIN_METRICS_FILE], final)

            mlflow_run.set_tags(
                {
                    runs.CHECKPOINT_TAG: runs.checkpoint_digest(staged[paths.CHECKPOINT_FILE]),
                    runs.TAG_PREFIX + "device": str(device),
                    runs.TAG_PREFIX + "world_size": str(world.size),
                    runs.TAG_PREFIX + "backend": world.backend or "none",
                }
            )
            mlflow_run.log_metrics(
                {
                    "train_seconds": seconds,
                    "train_samples_per_second": params.train.epochs * len(train_split) / seconds,
                }
            )
            for output, staged_file in staged.items():
                mlflow_run.log_artifact(staged_file, "train", output.name)
    log.info(
        "wrote %s (val_accuracy %.4f) in %.1f s",
        paths.CHECKPOINT_FILE,
        final["val_accuracy"],
        seconds,
    )
