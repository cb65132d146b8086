"""The public name of the pinned CPU numerics (mlpipe.core.numerics): scripts and outside checks
that pin the numerics before importing torch keep calling ``mlpipe.numerics.pin``."""

from mlpipe.core.numerics import (
    PORTABLE_ENVIRONMENT,
    PORTABLE_THREADS,
    Numerics,
    NumericsError,
    configure_torch,
    pin,
)

__all__ = [
    "PORTABLE_ENVIRONMENT",
    "PORTABLE_THREADS",
    "Numerics",
    "NumericsError",
    "configure_torch",
    "pin",
]
