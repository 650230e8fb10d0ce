"""What produced a result: package versions, the device, and the code's git commit.

`results.json` and `config.json` carry this under `provenance`, so a figure can be traced
to the code and libraries that measured it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

import jax

PACKAGES = (
    "rankjax",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "aqtp",
    "rax",
    "ml-collections",
    "numpy",
)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(path: str | None = None) -> dict[str, Any] | None:
    """`{"commit", "dirty"}` of the git checkout holding `path` (default: this package),
    or None when it is not in one (an installed wheel) or git is missing."""
    folder = os.path.dirname(os.path.abspath(path or __file__))

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", folder, *args], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def provenance() -> dict[str, Any]:
    """Package versions, Python, the devices and the git commit, for the record."""
    devices = jax.devices()
    return {
        "versions": {p: _version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "device": devices[0].device_kind,
        "platform": devices[0].platform,
        "devices": len(devices),
        "processes": jax.process_count(),
        "git": git_commit(),
    }
