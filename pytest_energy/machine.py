"""A description of the machine a run measured on, for results files and baseline profiles."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from pytest_energy.meters.cputime import cpu_model_name


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model and thread count, OS, Python and library versions (no GPU query here)."""
    return {
        "cpu_model": cpu_model_name(),
        "cpu_threads": os.cpu_count() or 1,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "versions": {
            name: package_version(name)
            for name in ("pytest-energy", "torch", "torchvision", "pytest")
        },
    }
