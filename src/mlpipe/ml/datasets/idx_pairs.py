"""Any labelled grayscale dataset in IDX files (MNIST, KMNIST, EMNIST, your own): a directory of
pairs ``<name>-images-idx3-ubyte`` + ``<name>-labels-idx1-ubyte`` (each may end in ``.gz``, and
``.idx`` may stand for ``-idx``), all pairs pooled; class names come from params.yaml."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from mlpipe.contracts.data import LabeledImages
from mlpipe.core.errors import DataError
from mlpipe.ml.datasets.idx import read_pairs

log = logging.getLogger(__name__)

PIXEL_MAX = 255  # uint8 pixels in their own scale
IMAGES_FILE = re.compile(r"(?P<name>.+)-images[-.]idx3-ubyte(?:\.gz)?")
LABELS_FILE = re.compile(r"(?P<name>.+)-labels[-.]idx1-ubyte(?:\.gz)?")
EXPECTED = "<name>-images-idx3-ubyte and <name>-labels-idx1-ubyte (each may end in .gz)"


def load_idx_pairs(source: Path, classes: Sequence[str]) -> LabeledImages:
    """Every pair's images and labels in ``source``, pairs in name order; label i is ``classes[i]``.

    No checksums: the files are the team's own (Fashion-MNIST's reader verifies its published ones).
    """
    pairs = _pairs(source)
    hint = f"; data.classes in params.yaml names {len(classes)} classes: give one name per label value"
    images, labels = read_pairs(pairs, len(classes), hint)
    log.info("read %d images from %d IDX pairs in %s", len(images), len(pairs), source)
    return LabeledImages(images, labels, tuple(classes), PIXEL_MAX)


def _pairs(source: Path) -> list[tuple[Path, Path]]:
    """The (images, labels) files of each name in ``source``, sorted by name; at least one pair."""
    if not source.is_dir():
        what = "not a directory" if source.exists() else "not found"
        raise DataError(
            f"{source}: {what}; set data.source in params.yaml to the directory holding the IDX files"
        )
    images = _by_name(source, IMAGES_FILE)
    labels = _by_name(source, LABELS_FILE)
    if not images and not labels:
        raise DataError(f"{source}: no IDX files; expected pairs {EXPECTED}")
    unpaired = sorted(images.keys() ^ labels.keys())
    if unpaired:
        name = unpaired[0]
        present, missing = (images, "labels") if name in images else (labels, "images")
        raise DataError(f"{present[name]}: no {missing} file beside it; expected the pair {EXPECTED}")
    return [(images[name], labels[name]) for name in sorted(images)]


def _by_name(source: Path, pattern: re.Pattern[str]) -> dict[str, Path]:
    """The files of ``source`` matching ``pattern``, by the name they start with; one per name."""
    found: dict[str, Path] = {}
    for path in sorted(source.iterdir()):
        match = pattern.fullmatch(path.name)
        if match is None or path.name.startswith(".") or not path.is_file():
            continue
        name = match["name"]
        if name in found:
            raise DataError(f"{source}: both {found[name].name} and {path.name} hold {name!r}; keep one")
        found[name] = path
    return found
