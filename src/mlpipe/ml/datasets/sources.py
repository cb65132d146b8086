"""Load the dataset that params.yaml names, as raw labeled images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mlpipe.contracts.data import LabeledImages
from mlpipe.core.errors import ParamsError
from mlpipe.core.params import DataParams

DIGITS_PIXEL_MAX = 16


def cache_dir() -> Path:
    """Where downloads are kept: $MLPIPE_CACHE_DIR, else $XDG_CACHE_HOME/mlpipe, else ~/.cache/mlpipe."""
    if explicit := os.environ.get("MLPIPE_CACHE_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlpipe"


def load_digits() -> LabeledImages:
    """scikit-learn's bundled 8×8 digits (1,797 images, pixels 0..16); no network needed."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return LabeledImages(
        images=bunch.images.astype(np.uint8),
        labels=bunch.target.astype(np.int64),
        classes=tuple(str(name) for name in bunch.target_names),
        pixel_max=DIGITS_PIXEL_MAX,
    )


def load_source(params: DataParams) -> LabeledImages:
    """The configured dataset, unsplit."""
    if params.dataset == "digits":
        return load_digits()
    if params.dataset == "fashion-mnist":
        from mlpipe.ml.datasets.fashion_mnist import load_fashion_mnist

        source = Path(params.source) if params.source else None
        return load_fashion_mnist(source, cache_dir=cache_dir() / "fashion-mnist")
    if params.source is None:
        raise ParamsError(f"data.source: required for dataset {params.dataset!r}")
    if params.dataset == "idx":
        from mlpipe.ml.datasets.idx_pairs import load_idx_pairs

        if params.classes is None:
            raise ParamsError("data.classes: required for dataset 'idx'")
        return load_idx_pairs(Path(params.source), params.classes)
    from mlpipe.ml.datasets.imagefolder import load_imagefolder

    size = (params.image_size[0], params.image_size[1]) if params.image_size else None
    return load_imagefolder(Path(params.source), size, params.channels)
