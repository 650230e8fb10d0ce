"""Test setup: 8 virtual CPU devices (set before JAX starts) and the shared data folder.

The suite runs on CPU. On a GPU machine, `RANKJAX_TEST_PLATFORMS=cuda,cpu pytest tests -k
on_gpu` runs the GPU-only tests (their names end in `on_gpu`) with the GPU as JAX's
default backend.
"""

import os
import tempfile

import jax

# Multi-device tests run on 8 CPU devices; single-device runs pick one with mesh.num_devices.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", os.environ.get("RANKJAX_TEST_PLATFORMS", "cpu"))
# Many tests train the same small configs (and the resume and distributed tests rerun them
# in subprocesses, which inherit the variable): XLA's persistent compilation cache lets
# them compile each program once per machine instead of once per run.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"rankjax-tests-jax-cache-{os.getuid()}"),
)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

import pytest  # noqa: E402

from rankjax.data import shared_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """`$RANKJAX_SHARED/data`; tests that need it are skipped on a machine without it."""
    path = os.path.join(shared_dir(), "data")
    if not os.path.isdir(path):
        pytest.skip(f"shared data folder {path} is absent (set RANKJAX_SHARED)")
    return path
