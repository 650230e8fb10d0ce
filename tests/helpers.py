"""Shared test helpers: configs from configs/ by name, and the training command line."""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")


def load_config(name: str, arg: str | None = None):
    """`configs/<name>.py:get_config(arg)`, unlocked so tests can override fields."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def start_training(*args: str, devices: int | None = None) -> subprocess.Popen:
    """Starts `python -m experiments.train ARGS` from the repository root on the CPU.

    Args:
      *args: command-line arguments.
      devices: number of virtual CPU devices; None leaves JAX's default (one).
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
