"""rankjax as a user installs it: the wheel, in a fresh virtual environment, used from an
empty folder with no checkout and no shared data: the `rankjax-train` command with a
shipped config by name, and notebooks/quickstart.ipynb executed top to bottom in a kernel."""

import glob
import json
import os
import subprocess
import sys
import sysconfig
import venv

import pytest
from helpers import ROOT

NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")

# Runs in the fresh environment's Python: executes the notebook in a kernel of that Python.
_RUN_NOTEBOOK = """
import sys, nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
client = nbclient.NotebookClient(
    nb, timeout=900, kernel_name="rankjax-test", resources={"metadata": {"path": sys.argv[2]}}
)
client.execute()
nbformat.write(nb, sys.argv[3])
"""


def _run(cmd: list[str], cwd: str, env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout


def _fresh_env(home: str) -> dict[str, str]:
    """The environment of a user without the checkout: no PYTHONPATH, no shared data."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANKJAX_SHARED")}
    return {**env, "JAX_PLATFORMS": "cpu", "HOME": home, "JUPYTER_PLATFORM_DIRS": "1"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`(python, bin folder, env)` of a fresh environment holding the built wheel. Its
    other packages come from the test environment, so nothing is downloaded: a `.pth` file
    appends the test environment's site-packages to the new one's path (as plain folders,
    so an editable rankjax installed there stays out of reach)."""
    root = tmp_path_factory.mktemp("install")
    dist, prefix, home = root / "dist", root / "venv", root / "home"
    home.mkdir()
    env = _fresh_env(str(home))
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), ROOT],
        str(root),
        env,
    )  # fmt: skip
    (wheel,) = glob.glob(str(dist / "rankjax-*.whl"))
    venv.create(prefix, with_pip=True)
    bindir = prefix / "bin"
    python = str(bindir / "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                str(root), env).strip()  # fmt: skip
    ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    with open(os.path.join(site, "rankjax_test_env.pth"), "w") as f:
        f.write("\n".join(ours) + "\n")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], str(root), env)
    _run(
        [python, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "rankjax-test"],
        str(root),
        env,
    )
    return python, bindir, env


def test_the_wheel_holds_the_package_configs_and_command(installed, tmp_path):
    python, bindir, env = installed
    code = (
        "import json, os, rankjax, rankjax.configs as c; "
        "print(json.dumps([rankjax.__file__, sorted(os.listdir(os.path.dirname(c.__file__))), "
        "os.path.exists(os.path.join(os.path.dirname(rankjax.__file__), 'py.typed'))]))"
    )
    where, configs, typed = json.loads(_run([python, "-c", code], str(tmp_path), env))
    assert where.startswith(str(bindir.parent)), where  # the wheel's copy, not the checkout
    assert "synthetic_listwise.py" in configs and "homedepot_distill.py" in configs
    assert typed
    assert os.path.exists(bindir / "rankjax-train")


def test_rankjax_train_runs_a_shipped_config_from_an_empty_folder(installed, tmp_path):
    _, bindir, env = installed
    cmd = [
        str(bindir / "rankjax-train"),
        "--config=synthetic_listwise:runlocal",
        f"--workdir={tmp_path / 'run'}",
    ]
    _run(cmd, str(tmp_path), env)
    with open(tmp_path / "run" / "results.json") as f:
        results = json.load(f)
    assert results["step"] == 2 and results["test"]["ndcg@10"] > 0
    # A name that is not shipped: one line naming the closest ones, exit 2.
    bad = subprocess.run(
        [str(bindir / "rankjax-train"), "--config=synthetic_listwis", "--workdir=w"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "closest: ['synthetic_listwise'" in bad.stderr and "Traceback" not in bad.stderr


def test_quickstart_notebook_runs_from_the_installed_package(installed, tmp_path):
    python, _, env = installed
    work = tmp_path / "notebook"
    env = {**env, "RANKJAX_NOTEBOOK_RUNLOCAL": "1", "RANKJAX_NOTEBOOK_WORKDIR": str(work)}
    executed = tmp_path / "executed.ipynb"
    _run([python, "-c", _RUN_NOTEBOOK, NOTEBOOK, str(tmp_path), str(executed)], str(tmp_path), env)
    # Every variant trained (runlocal: 2 steps) and was compared; plot and export exist.
    for name in ("synthetic_listwise", "synthetic_listwise_int8", "synthetic_listwise_nm24",
                 "synthetic_listwise_int8_nm24"):  # fmt: skip
        with open(work / name / "results.json") as f:
            results = json.load(f)
        assert results["step"] == 2
        assert all(v == v for v in results["test"].values())  # no NaN
    with open(executed) as f:
        cells = json.load(f)["cells"]
    printed = "".join(
        "".join(o.get("text", "")) for c in cells if c["cell_type"] == "code" for o in c["outputs"]
    )
    sizes = {}
    for line in printed.splitlines():
        parts = line.rsplit(maxsplit=3)
        if len(parts) == 4 and parts[-1].replace(",", "").isdigit():
            sizes[parts[0]] = int(parts[-1].replace(",", ""))
    assert sizes["2:4 + int8"] < sizes["int8"] < sizes["float32"], printed
    assert (work / "quality_vs_bytes.png").stat().st_size > 1000
    assert (work / "ranker.jaxexport").exists()
