"""Packaging for rankjax. The wheel ships the `rankjax` package (with `py.typed`) and the
experiment configs as `rankjax.configs` (source: `configs/`), and the `rankjax-train`
command."""

import re

import setuptools

# One version source: `rankjax/__init__.py`.
with open("rankjax/__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setuptools.setup(
    name="rankjax",
    version=VERSION,
    license="Apache-2.0",
    description="JAX research framework for compressed rankers in search and recommendation.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=[*setuptools.find_packages(include=["rankjax", "rankjax.*"]), "rankjax.configs"],
    package_dir={"rankjax.configs": "configs"},
    package_data={"rankjax": ["py.typed"]},
    entry_points={"console_scripts": ["rankjax-train = rankjax.cli:run"]},
    python_requires=">=3.11",
    install_requires=[
        "absl-py>=2.1.0",
        "aqtp>=0.9.0",  # fp8 (e4m3) quantization
        "flatbuffers>=24.3.25",  # jax.export serialization (rankjax.export)
        "flax>=0.12.0",
        "grain>=0.2.8",  # the input pipeline's threads (grain.ReadOptions)
        "jax>=0.7.1",  # jax.set_mesh
        "ml-collections>=1.0.0",
        "numpy>=1.26.4",
        "optax>=0.2.4",
        # The second quantization backend (quant.backend="qwix"); 0.1.8 is the first
        # tested, and rankjax reads three of its internal names (compression/qwix_backend).
        "qwix>=0.1.8",
        "orbax-checkpoint>=0.11.17",  # the first to import with jax 0.7
        "rax>=0.4.0",
        "tensorboardX>=2.6",
        "tqdm>=4.66",  # the progress bar in notebooks
    ],
    extras_require={
        # Independent metric implementation, linter and test runner (2 workers: JAX's
        # compiles are mostly single-threaded, so two test processes keep 2 cores busy);
        # matplotlib for the quickstart notebook's plot, which the tests execute.
        "dev": [
            "hypothesis>=6.100",
            # The notebook test executes notebooks/quickstart.ipynb in a kernel.
            "ipykernel>=6.29",
            "matplotlib>=3.8",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "pytrec-eval-terrier>=0.5.6",
            "ruff>=0.6",
            # Builds the wheel that tests/install_test.py installs (bdist_wheel built in).
            "setuptools>=70.1",
        ],
        # Tokenizers and safetensors for the text rankers.
        "text": ["safetensors>=0.4", "tokenizers>=0.19"],
        # Accelerators: JAX's CUDA 12 wheels (NVIDIA GPUs), or its TPU runtime.
        "cuda12": ["jax[cuda12]>=0.7.1"],
        "tpu": ["jax[tpu]>=0.7.1"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
