"""Input drift: the training data's reference profile, and the test that compares inputs with it.

The statistic is the per-image mean intensity (mean pixel / pixel_max, in 0..1, over every
channel of a colour image): brightness, contrast, inverted or blank images and a change of
source all move it, and one number per image keeps the profile tiny. The profile holds the
training split's distribution of it in ``PROFILE_BINS`` quantile bins (bin edges from the
training data, so every bin holds about the same share). Inputs are compared with the
Population Stability Index over those bins,

    PSI = sum_i (p_i - q_i) * ln(p_i / q_i),   p: inputs' shares, q: training shares,

with half a count added to every bin so that empty bins stay finite. Read it as the usual rule
of thumb: below 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a large one; drift is declared
at ``DRIFT_THRESHOLD``. Its bias under no drift is about (bins - 1) / n for n inputs, which is
why the server scores only a full window of ``DEFAULT_WINDOW`` images.

A table model's profile (``TableProfile``) holds one such distribution per column instead: a
number's values in ``PROFILE_BINS`` quantile bins of the training split, a category's levels and
one bin for a level not seen in training, each with one more bin for a missing value. Each
column is scored with PSI on its own (``mlpipe_column_drift_score``), and the table's drift score
is the largest of them: the column that moved most.

The package stage writes the profile into the package (``profile.json``); the server's sliding
window (``DriftWindow``) and ``mlpipe drift`` (``compare``) score inputs with the same code.
This module needs only NumPy: it runs in the slim serve image.
"""

from __future__ import annotations

import csv
import io
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlpipe.contracts.data import read_split
from mlpipe.contracts.manifest import PROFILE_FILE
from mlpipe.contracts.table import Column, Table, parse_categories, parse_numbers
from mlpipe.core.errors import ArtifactError, DataError, MlpipeError

PROFILE_VERSION = 1
FEATURE = "mean_intensity"
PROFILE_BINS = 10
DRIFT_THRESHOLD = 0.2
DEFAULT_WINDOW = 500
SMOOTHING = 0.5  # pseudo-count per bin
Shift = Literal["none", "invert", "brighten", "darken"]
SHIFTS: tuple[Shift, ...] = ("none", "invert", "brighten", "darken")


class DriftError(MlpipeError):
    """A batch of inputs drifted from the training data's profile."""


def mean_intensity(images: np.ndarray, pixel_max: int) -> np.ndarray:
    """Per-image mean pixel as a fraction of ``pixel_max``: float64 [N] for images [N, H, W] or
    [N, H, W, C] (the mean over every channel)."""
    return images.reshape(len(images), -1).mean(axis=1, dtype=np.float64) / pixel_max


def psi(counts: np.ndarray, reference_counts: tuple[int, ...]) -> float:
    """Population Stability Index of inputs binned as ``counts`` against ``reference_counts``."""
    observed = np.asarray(counts, dtype=np.float64) + SMOOTHING
    observed /= observed.sum()
    reference = np.asarray(reference_counts, dtype=np.float64) + SMOOTHING
    reference /= reference.sum()
    return float(np.sum((observed - reference) * np.log(observed / reference)))


@dataclass(frozen=True)
class Profile:
    """The training split's distribution of per-image mean intensity (``profile.json``)."""

    pixel_max: int
    edges: tuple[float, ...]  # inner bin edges, ascending; bin i holds edges[i-1] <= x < edges[i]
    counts: tuple[int, ...]  # training images per bin: len(edges) + 1 bins
    mean: float
    std: float

    @classmethod
    def of(cls, images: np.ndarray, pixel_max: int, bins: int = PROFILE_BINS) -> Profile:
        """The profile of ``images`` (uint8 [N, H, W] or [N, H, W, C], the training split)."""
        values = mean_intensity(images, pixel_max)
        quantiles = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
        edges = tuple(float(e) for e in np.unique(quantiles))  # ties in discrete data merge bins
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        return cls(pixel_max, edges, tuple(int(c) for c in counts), float(values.mean()), float(values.std()))

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        """Bin index of each value."""
        return np.searchsorted(self.edges, values, side="right")

    def histogram(self, values: np.ndarray) -> np.ndarray:
        """Inputs per bin, int64 [bins]."""
        return np.bincount(self.bin_of(values), minlength=len(self.counts))

    def psi(self, counts: np.ndarray) -> float:
        """Population Stability Index of inputs binned as ``counts`` against the training data."""
        return psi(counts, self.counts)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "feature": FEATURE,
            "pixel_max": self.pixel_max,
            "edges": list(self.edges),
            "counts": list(self.counts),
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Profile:
        if raw.get("version") != PROFILE_VERSION or raw.get("feature") != FEATURE:
            raise ValueError(
                f"profile version {raw.get('version')!r} of feature {raw.get('feature')!r}; this mlpipe "
                f"reads version {PROFILE_VERSION} of {FEATURE!r}"
            )
        profile = cls(
            pixel_max=int(raw["pixel_max"]),
            edges=tuple(float(e) for e in raw["edges"]),
            counts=tuple(int(c) for c in raw["counts"]),
            mean=float(raw["mean"]),
            std=float(raw["std"]),
        )
        if len(profile.counts) != len(profile.edges) + 1 or list(profile.edges) != sorted(set(profile.edges)):
            raise ValueError("needs ascending, distinct edges and one count more than edges")
        if profile.pixel_max < 1 or min(profile.counts) < 0 or sum(profile.counts) < 1:
            raise ValueError("needs pixel_max >= 1 and non-negative counts of at least one image")
        return profile


def read_profile(model_dir: Path) -> Profile:
    """The profile shipped in a package; ArtifactError if it is missing or malformed."""
    path = model_dir / PROFILE_FILE
    try:
        return Profile.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as e:
        raise ArtifactError(
            f"{path}: not found; rebuild the package with `dvc repro package` (or serve without the "
            "drift window: --no-monitoring)"
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ArtifactError(
            f"{path}: malformed drift profile ({e}); rebuild it with `dvc repro package`"
        ) from e


@dataclass(frozen=True)
class DriftResult:
    """One batch of inputs scored against the profile."""

    images: int
    psi: float
    threshold: float
    mean: float
    reference_mean: float
    counts: tuple[int, ...]
    reference_counts: tuple[int, ...]

    @property
    def drifted(self) -> bool:
        return self.psi >= self.threshold

    def lines(self) -> list[str]:
        """What `mlpipe drift` prints: the statistics and the verdict."""
        reference_total = sum(self.reference_counts)
        rows = [
            f"{FEATURE} (mean pixel / pixel_max): inputs {self.mean:.4f}, training {self.reference_mean:.4f}",
            f"{'bin':>3}  {'inputs':>7}  {'training':>8}",
        ]
        for i, (ours, theirs) in enumerate(zip(self.counts, self.reference_counts, strict=True)):
            rows.append(f"{i:>3}  {ours / self.images:>7.1%}  {theirs / reference_total:>8.1%}")
        verdict = "DRIFT" if self.drifted else "no drift"
        rows.append(f"PSI {self.psi:.4f} over {self.images} images (threshold {self.threshold:g}): {verdict}")
        return rows


def compare(profile: Profile, images: np.ndarray, threshold: float = DRIFT_THRESHOLD) -> DriftResult:
    """Score a batch of images [N, H, W] or [N, H, W, C] (raw pixels) against the profile."""
    if len(images) == 0:
        raise MlpipeError("no images to compare with the drift profile")
    if images.min() < 0 or images.max() > profile.pixel_max:
        raise DataError(
            f"pixel values from {images.min()} to {images.max()}; the model takes raw pixels in "
            f"0..{profile.pixel_max} (the training data's scale)"
        )
    values = mean_intensity(images, profile.pixel_max)
    counts = profile.histogram(values)
    return DriftResult(
        images=len(images),
        psi=profile.psi(counts),
        threshold=threshold,
        mean=float(values.mean()),
        reference_mean=profile.mean,
        counts=tuple(int(c) for c in counts),
        reference_counts=profile.counts,
    )


class DriftWindow:
    """The last ``size`` inputs' bins, scored against the profile once the window is full."""

    def __init__(self, profile: Profile | ColumnProfile, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise MlpipeError(f"drift window size must be at least 1, got {size}")
        self.profile = profile
        self.size = size
        self._bins: deque[int] = deque(maxlen=size)
        self._counts = np.zeros(len(profile.counts), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._bins)

    def add(self, values: np.ndarray) -> None:
        """Slide the window over a batch's per-image mean intensities (``mean_intensity``)."""
        self.add_bins(self.profile.bin_of(values))

    def add_bins(self, bins: np.ndarray) -> None:
        """Slide the window over a batch's bin indices."""
        for b in bins.tolist():
            if len(self._bins) == self.size:
                self._counts[self._bins[0]] -= 1
            self._bins.append(b)
            self._counts[b] += 1

    def score(self) -> float | None:
        """PSI of the window against the profile; None until the window is full."""
        return self.profile.psi(self._counts) if len(self._bins) == self.size else None


def shifted(images: np.ndarray, shift: Shift, pixel_max: int) -> np.ndarray:
    """A shifted copy of uint8 images, to see what drift looks like: inverted, or a quarter of the
    pixel range brighter or darker (clipped)."""
    if shift == "none":
        return images
    if shift == "invert":
        return (pixel_max - images.astype(np.int32)).astype(np.uint8)
    step = max(1, pixel_max // 4) * (1 if shift == "brighten" else -1)
    return np.clip(images.astype(np.int32) + step, 0, pixel_max).astype(np.uint8)


def load_images(path: Path) -> np.ndarray:
    """Raw-pixel images [N, H, W] (or [N, H, W, 3], RGB) from a .npy file, as uint8; DataError if
    they are not that."""
    try:
        images = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"{path}: not found") from e
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a .npy array ({e})") from e
    colour = images.ndim == 4 and images.shape[3] == 3
    if not (images.ndim == 3 or colour) or images.dtype.kind not in "iu" or len(images) == 0:
        raise DataError(
            f"{path}: expected integer images [N, H, W] or [N, H, W, 3], "
            f"got {images.dtype} {list(images.shape)}"
        )
    if images.min() < 0 or images.max() > np.iinfo(np.uint8).max:
        raise DataError(f"{path}: pixel values must be within 0..255, got {images.min()}..{images.max()}")
    return images.astype(np.uint8)


def load_split(data_dir: Path, split: str) -> np.ndarray:
    """A prepared split's images."""
    return read_split(split, root=data_dir).images


TABLE_FEATURE = "columns"
NUMBER_BINS, CATEGORY_BINS = "quantiles", "levels"


@dataclass(frozen=True)
class ColumnProfile:
    """One column's training distribution. A number's bins are ``edges``' quantile bins (bin i
    holds edges[i-1] <= x < edges[i]); a category's are its ``levels``, then one for any other
    level; the last bin of either holds missing values. ``counts`` are the training rows per bin."""

    name: str
    type: str
    counts: tuple[int, ...]
    edges: tuple[float, ...] = ()
    levels: tuple[str, ...] = ()

    @property
    def is_number(self) -> bool:
        return self.type == "number"

    @classmethod
    def of(cls, column: Column, values: np.ndarray, bins: int = PROFILE_BINS) -> ColumnProfile:
        """The profile of a column's training ``values`` (float64 with NaN, or text with None)."""
        if column.is_number:
            present = values[~np.isnan(values)]
            quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]) if len(present) else []
            edges = tuple(float(e) for e in np.unique(quantiles))
            profile = cls(column.name, column.type, (), edges=edges)
        else:
            profile = cls(column.name, column.type, (), levels=column.levels)
        counts = np.bincount(profile.bin_of(values), minlength=profile.bins)
        return cls(profile.name, profile.type, tuple(int(c) for c in counts), profile.edges, profile.levels)

    @property
    def bins(self) -> int:
        return (len(self.edges) + 2) if self.is_number else (len(self.levels) + 2)

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        """Bin index of each value: numbers float [N] with NaN for missing; categories text [N]
        with None (or the empty text) for missing."""
        missing = self.bins - 1
        if self.is_number:
            numbers = np.asarray(values, dtype=np.float64)
            found = np.searchsorted(self.edges, numbers, side="right")
            return np.where(np.isnan(numbers), missing, found).astype(np.int64)
        index = {level: i for i, level in enumerate(self.levels)}
        other = len(self.levels)
        return np.asarray(
            [
                missing if not isinstance(v, str) or v == "" else index.get(v, other)
                for v in np.asarray(values, dtype=object).tolist()
            ],
            dtype=np.int64,
        )

    def psi(self, counts: np.ndarray) -> float:
        """PSI of inputs binned as ``counts`` against the training rows."""
        return psi(counts, self.counts)

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.is_number:
            raw["edges"] = list(self.edges)
        else:
            raw["levels"] = list(self.levels)
        return raw | {"counts": list(self.counts)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ColumnProfile:
        profile = cls(
            name=str(raw["name"]),
            type=str(raw["type"]),
            counts=tuple(int(c) for c in raw["counts"]),
            edges=tuple(float(e) for e in raw.get("edges", ())),
            levels=tuple(str(level) for level in raw.get("levels", ())),
        )
        if profile.type not in ("number", "category") or len(profile.counts) != profile.bins:
            raise ValueError(f"column {profile.name!r}: needs type number or category and one count per bin")
        if (
            list(profile.edges) != sorted(set(profile.edges))
            or min(profile.counts) < 0
            or sum(profile.counts) < 1
        ):
            raise ValueError(
                f"column {profile.name!r}: needs ascending, distinct edges and non-negative counts"
            )
        return profile


@dataclass(frozen=True)
class TableProfile:
    """A table model's training distribution, one ``ColumnProfile`` per column (``profile.json``)."""

    columns: tuple[ColumnProfile, ...]

    @classmethod
    def of(cls, table: Table, columns: tuple[Column, ...], bins: int = PROFILE_BINS) -> TableProfile:
        """The profile of the training split's ``columns``."""
        return cls(tuple(ColumnProfile.of(column, table.features[column.name], bins) for column in columns))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "feature": TABLE_FEATURE,
            "columns": [column.to_json() for column in self.columns],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TableProfile:
        if raw.get("version") != PROFILE_VERSION or raw.get("feature") != TABLE_FEATURE:
            raise ValueError(
                f"profile version {raw.get('version')!r} of feature {raw.get('feature')!r}; this mlpipe "
                f"reads version {PROFILE_VERSION} of {TABLE_FEATURE!r} for tables"
            )
        return cls(tuple(ColumnProfile.from_json(column) for column in raw["columns"]))


class TableDriftWindow:
    """The last ``size`` rows' bins, one window per column, each scored once full."""

    def __init__(self, profile: TableProfile, size: int = DEFAULT_WINDOW) -> None:
        self.profile = profile
        self.windows = {column.name: DriftWindow(column, size) for column in profile.columns}

    def __len__(self) -> int:
        return len(next(iter(self.windows.values())))

    def add(self, features: dict[str, np.ndarray]) -> None:
        """Slide every column's window over a batch of rows (column -> values [N])."""
        for name, window in self.windows.items():
            window.add_bins(window.profile.bin_of(features[name]))

    def scores(self) -> dict[str, float | None]:
        """Each column's PSI against its training distribution; None until the window is full."""
        return {name: window.score() for name, window in self.windows.items()}

    def score(self) -> float | None:
        """The table's drift score: the largest column's; None until the window is full."""
        scores = [score for score in self.scores().values() if score is not None]
        return max(scores) if scores else None


@dataclass(frozen=True)
class TableDriftResult:
    """A batch of rows scored against a table model's profile, column by column."""

    rows: int
    scores: dict[str, float]  # each column's PSI, in the profile's order
    threshold: float

    @property
    def psi(self) -> float:
        """The table's drift score: the largest column's."""
        return max(self.scores.values())

    @property
    def drifted(self) -> bool:
        return self.psi >= self.threshold

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, score in self.scores.items() if score >= self.threshold]

    def lines(self) -> list[str]:
        """What `mlpipe drift` prints: each column's PSI, then the verdict."""
        width = max(len(name) for name in self.scores)
        rows = [f"{'column':<{width}}  {'PSI':>7}"]
        rows += [
            f"{name:<{width}}  {score:>7.4f}{'  DRIFT' if score >= self.threshold else ''}"
            for name, score in self.scores.items()
        ]
        verdict = f"DRIFT in {', '.join(self.drifted_columns)}" if self.drifted else "no drift"
        rows.append(
            f"PSI {self.psi:.4f} (the largest column's) over {self.rows} rows "
            f"(threshold {self.threshold:g}): {verdict}"
        )
        return rows


def compare_table(
    profile: TableProfile, features: dict[str, np.ndarray], threshold: float = DRIFT_THRESHOLD
) -> TableDriftResult:
    """Score a batch of rows (column -> values [N]: numbers with NaN, text with None where
    missing) against the profile, each column on its own (`mlpipe drift` on a table)."""
    rows = len(next(iter(features.values()))) if features else 0
    if rows == 0:
        raise MlpipeError("no rows to compare with the drift profile")
    scores = {}
    for column in profile.columns:
        counts = np.bincount(column.bin_of(features[column.name]), minlength=column.bins)
        scores[column.name] = column.psi(counts)
    return TableDriftResult(rows, scores, threshold)


def read_any_profile(model_dir: Path) -> Profile | TableProfile:
    """The drift profile shipped in a package, an image model's or a table model's; ArtifactError
    if it is missing or malformed."""
    path = model_dir / PROFILE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        raw = None  # read_profile says what is wrong
    if not (isinstance(raw, dict) and raw.get("feature") == TABLE_FEATURE):
        return read_profile(model_dir)
    try:
        return TableProfile.from_json(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(
            f"{path}: malformed drift profile ({e}); rebuild it with `dvc repro package`"
        ) from e


def read_table_profile(model_dir: Path, columns: Sequence[Column]) -> TableProfile:
    """The profile of a table package whose model takes ``columns``; ArtifactError if it is not
    that model's."""
    profile = read_any_profile(model_dir)
    expected = [(column.name, column.type) for column in columns]
    if isinstance(profile, TableProfile):
        found = [(column.name, column.type) for column in profile.columns]
        if found == expected:
            return profile
    raise ArtifactError(
        f"{model_dir / PROFILE_FILE}: does not profile the columns the model takes, {expected}; "
        "rebuild the package with `dvc repro package`"
    )


def load_rows(path: Path, profile: TableProfile) -> dict[str, np.ndarray]:
    """The profiled columns of a CSV file of rows (a header naming them; other columns are
    ignored), read as prepare reads a table: numbers float64 with NaN, text with None where
    missing; DataError saying what does not fit."""
    columns = profile.columns
    try:
        lines = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except FileNotFoundError as e:
        raise DataError(f"{path}: not found") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a UTF-8 CSV file ({e})") from e
    header, body = (lines[0], lines[1:]) if lines else ([], [])
    missing = [column.name for column in columns if column.name not in header]
    if missing:
        raise DataError(
            f"{path}: the header lacks the model's columns {missing}; the model takes "
            f"{[column.name for column in columns]} (other columns are ignored)"
        )
    if any(len(row) != len(header) for row in body):
        raise DataError(f"{path}: rows of unequal length; every row has one field per header column")
    texts = {name: [row[i] for row in body] for i, name in enumerate(header)}
    return {
        column.name: parse_numbers(column.name, texts[column.name])
        if column.is_number
        else parse_categories(texts[column.name])
        for column in columns
    }
