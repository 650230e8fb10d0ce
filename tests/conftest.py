"""Test setup: 8 virtual CPU devices (set before JAX starts) and the shared data folder.

The suite runs on CPU. On a GPU machine, `RANKJAX_TEST_PLATFORMS=cuda,cpu pytest tests -k
on_gpu` runs the GPU-only tests (their names end in `on_gpu`) with the GPU as JAX's
default backend.
"""

import os

import jax

# Multi-device tests run on 8 CPU devices; single-device runs pick one with mesh.num_devices.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", os.environ.get("RANKJAX_TEST_PLATFORMS", "cpu"))

import pytest  # noqa: E402

from rankjax.data import shared_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """`$RANKJAX_SHARED/data`; tests that need it are skipped on a machine without it."""
    path = os.path.join(shared_dir(), "data")
    if not os.path.isdir(path):
        pytest.skip(f"shared data folder {path} is absent (set RANKJAX_SHARED)")
    return path
