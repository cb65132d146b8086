"""Stage `train`: fit the CNN on the prepared train split, validating on val every epoch."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mlpipe import atomic, distributed, lineage, paths, tables, tracking
from mlpipe.data import LabeledImages, read_schema, read_split
from mlpipe.errors import MlpipeError
from mlpipe.model import Checkpoint, ConvNet, predict_logits, save_checkpoint
from mlpipe.params import Params, TrainParams
from mlpipe.preprocessing import Preprocessing
from mlpipe.tuning.reporter import report_epoch

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
TRAIN_OUTPUTS = (paths.TRAIN_HISTORY_FILE, paths.TRAIN_METRICS_FILE, paths.CHECKPOINT_FILE)


@dataclass(frozen=True)
class Tensors:
    """A split on the training device: normalised inputs and labels."""

    inputs: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, split: LabeledImages, preprocessing: Preprocessing, device: torch.device) -> Tensors:
        inputs = torch.from_numpy(preprocessing.apply(split.images)).to(device)
        return cls(inputs.contiguous(), torch.from_numpy(split.labels).to(device))


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


def _score(model: nn.Module, data: Tensors, loss_fn: nn.Module, batch_size: int) -> tuple[float, float]:
    logits = predict_logits(model, data.inputs, batch_size)
    loss = float(loss_fn(logits, data.labels))
    accuracy = float((logits.argmax(1) == data.labels).float().mean())
    return loss, accuracy


def fit(
    model: nn.Module,
    train: Tensors,
    val: Tensors,
    params: TrainParams,
    device: torch.device,
    generator: torch.Generator,
    on_epoch: callable,  # type: ignore[valid-type]
    world: distributed.World = distributed.SINGLE_PROCESS,
) -> list[dict[str, float]]:
    """The training loop: shuffled mini-batches, AdamW, cosine schedule; returns the history.
    Under torchrun `train` is this rank's shard and the history covers all ranks."""
    batch_size = world.local_batch_size(params.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = -(-len(train.labels) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params.lr, total_steps=params.epochs * steps_per_epoch, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    amp = params.amp and device.type == "cuda"
    step_model = world.wrap(model, device)
    step_model = torch.compile(step_model) if params.compile else step_model
    history = []
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
        val_loss, val_accuracy = _score(model, val, loss_fn, max(params.batch_size, 1024))
        record = {
            "epoch": epoch,
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_accuracy": float(correct) / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": schedule.get_last_lr()[0],
        }
        history.append(record)
        on_epoch(record)
    return history


def _history_csv(history: list[dict[str, float]]) -> str:
    rows = (
        [str(row["epoch"]) if c == "epoch" else f"{row[c]:.6g}" for c in HISTORY_COLUMNS] for row in history
    )
    return tables.to_csv(HISTORY_COLUMNS, rows)


def run(params: Params) -> None:
    """Train on data/prepared/ and write the checkpoint, the history and the final metrics;
    under torchrun, as one rank of a data-parallel run (see mlpipe.distributed)."""
    with distributed.process_group(select_device(params.train.device)) as (world, device):
        _run(params, world, device)


def _run(params: Params, world: distributed.World, device: torch.device) -> None:
    schema = read_schema()
    preprocessing = Preprocessing(schema.pixel_max, schema.pixel_mean, schema.pixel_std)
    train_split, val_split = read_split("train", schema=schema), read_split("val", schema=schema)
    if world.is_main:  # rank 0 alone tracks and writes outputs
        # Check the tracking server before spending time on training.
        mlflow_client = tracking.client()
        tracking.close_abandoned_runs(mlflow_client)
        origin = lineage.current(params.digest("data", "model", "train"))

    generator = seed_everything(params.train.seed + world.rank, device, params.train.deterministic)
    model = ConvNet(params.model, schema.image_shape, len(schema.classes)).to(device)
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

    if not world.is_main:
        fit(model, train_data, val_data, params.train, device, generator, lambda _: None, world)
        return

    run_name = origin.dvc_experiment or f"train-{origin.git_commit[:8]}"
    with tracking.run(mlflow_client, run_name=run_name, tags=tracking.lineage_tags(origin)) as run_id:
        tracking.log_params(
            mlflow_client,
            run_id,
            tracking.flatten(params.model_dump(include={"data", "model", "train"})),
        )
        tracking.log_dataset(mlflow_client, run_id, origin.inputs.data_hash, "training")
        started = time.perf_counter()
        epoch_log = tracking.EpochLog(mlflow_client, run_id)

        def on_epoch(record: dict[str, float]) -> None:
            log.info(
                "epoch %d: train_loss %.4f val_loss %.4f val_accuracy %.4f",
                record["epoch"],
                record["train_loss"],
                record["val_loss"],
                record["val_accuracy"],
            )
            epoch_log.add(int(record["epoch"]), {k: v for k, v in record.items() if k != "epoch"})
            report_epoch(record)  # a no-op unless `mlpipe tune` runs this training as a trial

        history = fit(model, train_data, val_data, params.train, device, generator, on_epoch, world)
        epoch_log.flush()
        seconds = time.perf_counter() - started

        checkpoint = Checkpoint(
            params.model,
            schema.image_shape,
            schema.classes,
            preprocessing,
            {k: v.cpu() for k, v in model.state_dict().items()},
        )
        final = {k: round(v, 6) for k, v in history[-1].items() if k not in ("epoch", "lr")}
        # The outputs move into place together, and only once MLflow holds them: a tracking
        # failure leaves the previous outputs.
        with atomic.replace_files(TRAIN_OUTPUTS) as staged:
            save_checkpoint(staged[paths.CHECKPOINT_FILE], checkpoint)
            atomic.write_text(staged[paths.TRAIN_HISTORY_FILE], _history_csv(history))
            atomic.write_json(staged[paths.TRAIN_METRICS_FILE], final)

            digest = tracking.checkpoint_digest(staged[paths.CHECKPOINT_FILE])
            mlflow_client.set_tag(run_id, tracking.CHECKPOINT_TAG, digest)
            mlflow_client.set_tag(run_id, tracking.TAG_PREFIX + "device", str(device))
            mlflow_client.set_tag(run_id, tracking.TAG_PREFIX + "world_size", str(world.size))
            mlflow_client.set_tag(run_id, tracking.TAG_PREFIX + "backend", world.backend or "none")
            tracking.log_metrics(
                mlflow_client,
                run_id,
                {
                    "train_seconds": seconds,
                    "train_samples_per_second": params.train.epochs * len(train_split) / seconds,
                },
            )
            for out, artifact in staged.items():
                tracking.log_artifact_as(mlflow_client, run_id, artifact, "train", out.name)
    log.info(
        "wrote %s (val_accuracy %.4f) in %.1f s",
        paths.CHECKPOINT_FILE,
        final["val_accuracy"],
        seconds,
    )
