"""Every file the pipeline reads or writes, relative to the project root (where dvc.yaml is)."""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")
DVC_LOCK = Path("dvc.lock")
# `mlpipe tune`: the search space, and the study (SQLite, gitignored) that resuming continues
TUNE_FILE = Path("tune.yaml")
TUNE_STORAGE = Path("tune.db")
# the kustomize tree `mlpipe deploy` renders
DEPLOY_DIR = Path("deploy")

# data.source of a dataset with no files in the project (digits ships with scikit-learn;
# Fashion-MNIST can be downloaded): prepare depends on ${data.source}, which DVC needs to be a
# path that exists, so "none" is this folder, holding a README only.
NO_LOCAL_SOURCE = Path("data/raw/none")
PREPARED_DIR = Path("data/prepared")
SCHEMA_FILE = PREPARED_DIR / "schema.json"
# The prepared splits, as prepare writes them and the later stages read them.
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT = "train", "val", "test"
SPLITS = (TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT)

MODELS_DIR = Path("models")
CHECKPOINT_FILE = MODELS_DIR / "model.pt"
PACKAGE_DIR = MODELS_DIR / "package"

REPORTS_DIR = Path("reports")
TRAIN_METRICS_FILE = REPORTS_DIR / "train_metrics.json"
TRAIN_HISTORY_FILE = REPORTS_DIR / "train_history.csv"
METRICS_FILE = REPORTS_DIR / "metrics.json"
PER_CLASS_FILE = REPORTS_DIR / "per_class.csv"
PREDICTIONS_FILE = REPORTS_DIR / "predictions.csv"
CONFUSION_PNG = REPORTS_DIR / "confusion_matrix.png"
MISCLASSIFIED_PNG = REPORTS_DIR / "misclassified.png"


def split_images(split: str, root: Path = PREPARED_DIR) -> Path:
    """Path of a split's image array."""
    return root / f"{split}_images.npy"


def split_labels(split: str, root: Path = PREPARED_DIR) -> Path:
    """Path of a split's label array."""
    return root / f"{split}_labels.npy"
