"""CPU numerics that give the same bytes on every x86-64 CPU with AVX2, Intel or AMD, whatever
its core count.

Float results depend on which kernels the libraries pick (by instruction set, and in oneMKL by
the CPU's vendor) and on how reductions are split (by thread count). With
``train.numerics: portable`` (the default) every stage pins both before torch loads: ATen's
kernels at AVX2, oneDNN at AVX2 and unused for convolutions (its blocking follows the cache
sizes), oneMKL's ``COMPATIBLE`` branch of conditional numerical reproducibility, and a fixed
number of intra-op threads. ``COMPATIBLE`` is the one branch oneMKL takes on every vendor's CPU:
its ``AVX2`` branch is taken on Intel CPUs only (on AMD it falls back to ``AUTO`` and the Zen
kernels), so GEMM, ``exp`` and ``log`` would differ between vendors under it. Variables a user's
shell or container sets (``OMP_NUM_THREADS=1`` in a profile, a 1-core cgroup) are overridden, so
they cannot change a result. ``train.numerics: native`` lets the libraries pick the fastest path
for this machine; results are then reproducible on this machine only.

One thing the environment cannot reach: oneMKL's vector-math ``sqrt`` (ATen's ``torch.sqrt``
on CPU) depends on the CPU's features even under ``COMPATIBLE``, and is not correctly rounded.
Training therefore uses AdamW's fused kernel (mlpipe.ml.train.optimisation), whose square root is
the CPU's correctly rounded instruction: one answer on every CPU.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

log = logging.getLogger(__name__)

Numerics = Literal["portable", "native"]

# Threads per process under `portable`: how a reduction is split is part of its result, so
# the number is fixed rather than taken from the machine. One: the model's tensors are too small
# for a second thread to pay for its synchronisation (BENCHMARKS.md), and it is correct on any
# core count.
PORTABLE_THREADS = 1
PORTABLE_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "OMP_NUM_THREADS": str(PORTABLE_THREADS),
    "MKL_NUM_THREADS": str(PORTABLE_THREADS),
    "MKL_DYNAMIC": "FALSE",
}


class NumericsError(RuntimeError):
    """Numerics were pinned too late: torch had already read its settings."""


# What this process pinned before it imported torch (None: nothing, so the libraries' defaults).
_pinned: Numerics | None = None


def pin(numerics: Numerics) -> None:
    """Set the environment for ``numerics``; must run before the first ``import torch``, unless
    torch was imported after a ``pin`` of the same numerics (a warm process: tuning's prefork)."""
    global _pinned
    if "torch" in sys.modules:
        if (_pinned or "native") != numerics:
            raise NumericsError("mlpipe.core.numerics.pin() must run before torch is imported")
        if numerics == "portable":
            os.environ.update(PORTABLE_ENVIRONMENT)  # for the processes this one starts
        return
    if numerics == "native":
        return
    for key, value in PORTABLE_ENVIRONMENT.items():
        if os.environ.get(key, value) != value:
            log.debug("overriding %s=%s with %s (train.numerics: portable)", key, os.environ[key], value)
        os.environ[key] = value
    _pinned = numerics


def configure_torch(numerics: Numerics) -> None:
    """The torch-side half of ``pin``: thread count and convolution backend."""
    import torch

    if numerics == "native":
        return
    torch.set_num_threads(PORTABLE_THREADS)
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a flag, typed as its descriptor
