"""Stage `evaluate`: score the trained model on the held-out test split."""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from mlpipe.contracts.data import LabeledImages, Schema, read_any_schema, read_examples
from mlpipe.contracts.preprocessing import model_inputs, preprocessing_of
from mlpipe.core import atomic, paths, tables
from mlpipe.core.errors import ArtifactError
from mlpipe.core.params import Params
from mlpipe.ml import plots
from mlpipe.ml.model import load_checkpoint, predict_logits

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    """Write test metrics, per-class scores, predictions and figures under reports/."""
    schema = read_any_schema()
    test = read_examples(paths.TEST_SPLIT, schema)
    checkpoint = load_checkpoint(paths.CHECKPOINT_FILE)
    other_shape = isinstance(schema, Schema) and checkpoint.input_shape != schema.array_shape
    if (
        other_shape
        or checkpoint.classes != schema.classes
        or checkpoint.preprocessing != preprocessing_of(schema)
    ):
        raise ArtifactError(
            f"{paths.CHECKPOINT_FILE} was trained on other data (its classes, image shape, channels, "
            f"columns or their statistics differ from {paths.SCHEMA_FILE}); rerun `dvc repro train`"
        )
    model = checkpoint.build()
    inputs = model_inputs(test, checkpoint.preprocessing)
    probabilities = torch.softmax(predict_logits(model, inputs, params.evaluate.batch_size), 1).numpy()
    predicted = probabilities.argmax(1)
    classes = list(schema.classes)
    labels = list(range(len(classes)))

    metrics = {
        "test_accuracy": accuracy_score(test.labels, predicted),
        "test_macro_f1": f1_score(test.labels, predicted, labels=labels, average="macro", zero_division=0),
        "test_loss": log_loss(test.labels, probabilities, labels=labels),
    }
    metrics = {key: round(float(value), 6) for key, value in metrics.items()} | {"test_examples": len(test)}
    precision, recall, f1, support = precision_recall_fscore_support(
        test.labels, predicted, labels=labels, zero_division=0
    )
    per_class = [
        [name, round(float(p), 6), round(float(r), 6), round(float(f), 6), int(s)]
        for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    ]
    wrong = np.flatnonzero(predicted != test.labels)

    atomic.write_text(
        paths.PER_CLASS_FILE, tables.to_csv(["class", "precision", "recall", "f1", "support"], per_class)
    )
    atomic.write_text(
        paths.PREDICTIONS_FILE,
        tables.to_csv(
            ["actual", "predicted"],
            [[classes[t], classes[p]] for t, p in zip(test.labels, predicted, strict=True)],
        ),
    )
    plots.confusion_matrix_png(
        paths.CONFUSION_PNG,
        confusion_matrix(test.labels, predicted, labels=labels),
        classes,
        f"test accuracy {metrics['test_accuracy']:.4f}",
    )
    shown = wrong[: params.evaluate.misclassified_examples]
    true, guessed = [classes[i] for i in test.labels[shown]], [classes[i] for i in predicted[shown]]
    if isinstance(test, LabeledImages):
        limit = params.evaluate.misclassified_examples
        plots.misclassified_png(paths.MISCLASSIFIED_PNG, test.images[shown], true, guessed, limit)
    else:
        plots.misclassified_rows_png(paths.MISCLASSIFIED_PNG, test.subset(shown).records(), true, guessed)
    # metrics last: a run that fails earlier leaves the previous metrics file untouched
    atomic.write_json(paths.METRICS_FILE, metrics)
    log.info(
        "test accuracy %.4f, macro-F1 %.4f (%d of %d wrong)",
        metrics["test_accuracy"],
        metrics["test_macro_f1"],
        len(wrong),
        len(test),
    )
