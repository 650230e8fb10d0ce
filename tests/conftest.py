"""Test setup: 8 virtual CPU devices (set before JAX starts) and the shared data folder.

The suite runs on CPU. On a GPU machine, `RANKJAX_TEST_PLATFORMS=cuda,cpu pytest tests -k
on_gpu` runs the GPU-only tests (their names end in `on_gpu`) with the GPU as JAX's
default backend.
"""

import os
import tempfile

PLATFORMS = os.environ.get("RANKJAX_TEST_PLATFORMS", "cpu")
if PLATFORMS == "cpu":
    # The suite compiles hundreds of small programs and runs each briefly: at LLVM's
    # optimization level 0 XLA's CPU backend compiles them faster. On 2 cores the slowest
    # tests took 13% less time (189 -> 164 s), the whole suite 14:18 against 18:05-18:13
    # (subprocess tests inherit the setting).
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
    ).strip()

import jax  # noqa: E402

# Multi-device tests run on 8 CPU devices; single-device runs pick one with mesh.num_devices.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", PLATFORMS)
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

from rankjax import sharding  # noqa: E402
from rankjax.data import shared_dir  # noqa: E402


@pytest.fixture
def float32_products():
    """Full float32 matrix products for the test. On a GPU, JAX's default precision runs
    float32 products in TF32 (about 1e-3 relative), XLA's and the Pallas kernels' alike;
    tests that hold float32 kernels to float32 tolerances ask for "highest"."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture
def data_mesh():
    """A `data` mesh over up to 4 devices (virtual CPU devices in the suite, GPUs with
    `RANKJAX_TEST_PLATFORMS`); skipped where only one device is present."""
    if jax.device_count() < 2:
        pytest.skip("needs at least 2 devices")
    return sharding.make_mesh(min(4, jax.device_count()))


@pytest.fixture(scope="session")
def shared_data():
    """`$RANKJAX_SHARED/data`; tests that need it are skipped on a machine without it."""
    path = os.path.join(shared_dir(), "data")
    if not os.path.isdir(path):
        pytest.skip(f"shared data folder {path} is absent (set RANKJAX_SHARED)")
    return path
