"""`numerics.pin`: what a user's shell or container sets cannot change the pinned numerics."""

from __future__ import annotations

import json
import subprocess
import sys

from mlpipe.core import numerics

PIN_AND_REPORT = """
import json, os, sys
from mlpipe.core import numerics
numerics.pin(sys.argv[1])
import torch
numerics.configure_torch(sys.argv[1])
print(json.dumps({
    "environment": {key: os.environ.get(key) for key in numerics.PORTABLE_ENVIRONMENT},
    "threads": torch.get_num_threads(),
    "capability": torch.backends.cpu.get_cpu_capability(),
}))
"""

USER_ENVIRONMENT = {
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "3",
    "MKL_CBWR": "AVX2,STRICT",
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
}


def pinned(mode: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PIN_AND_REPORT, mode],
        env={"PATH": "/usr/bin:/bin", **USER_ENVIRONMENT},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_portable_numerics_override_the_users_variables() -> None:
    state = pinned("portable")
    assert state["environment"] == numerics.PORTABLE_ENVIRONMENT
    assert state["threads"] == numerics.PORTABLE_THREADS
    assert state["capability"] == "AVX2"


def test_native_numerics_leave_the_users_variables_alone() -> None:
    state = pinned("native")
    assert state["environment"]["OMP_NUM_THREADS"] == "2"
    assert state["environment"]["MKL_CBWR"] == "AVX2,STRICT"
    assert state["threads"] == 2


def test_the_public_name_pins_the_same_numerics() -> None:
    """`mlpipe.numerics`, the name scripts and outside checks import, is the core module's."""
    import mlpipe.numerics as public

    assert (public.pin, public.configure_torch) == (numerics.pin, numerics.configure_torch)
    assert public.PORTABLE_ENVIRONMENT is numerics.PORTABLE_ENVIRONMENT
