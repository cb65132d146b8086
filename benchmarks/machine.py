"""What a benchmark ran on, printed beside its figures: CPU, cores, memory, Python, load."""

from __future__ import annotations

import os
import platform
import re
import subprocess


def describe() -> str:
    """CPU model, cores, memory, Python version and load average of this machine, now."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.MULTILINE)
    cpu = model[1].strip() if model else platform.processor() or "unknown CPU"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, Python {platform.python_version()}, "
        f"load average {load}"
    )
