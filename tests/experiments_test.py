"""The command line: `python -m experiments.train` as a user runs it."""

import json
import subprocess

from helpers import start_training


def run(*args):
    p = start_training(*args)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_cli_trains_with_overrides_and_prints_the_table(tmp_path):
    p = run(
        "--config=configs/synthetic_listwise.py:runlocal",
        f"--workdir={tmp_path}",
        "--config.seed=3",
        "--config.optim.learning_rate=0.01",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "oracle (test)" in p.stdout and "random (test)" in p.stdout
    assert "Model size (compression.json)" in p.stdout and "whole model" in p.stdout
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 3 and config["optim"]["learning_rate"] == 0.01
    assert "step 2/2" in p.stderr and "examples/s" in p.stderr and "ETA" in p.stderr


def test_cli_reports_input_errors_in_one_line(tmp_path):
    p = run(
        "--config=configs/letor_lightgbm.py:data_dir=/nonexistent,runlocal", f"--workdir={tmp_path}"
    )
    assert p.returncode == 1
    assert "rankjax: error: /nonexistent/rank.train: no such file" in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_rejects_unknown_config_keys(tmp_path):
    p = run(
        "--config=configs/synthetic_listwise.py:runlocal",
        f"--workdir={tmp_path}",
        "--config.optim.learning_rat=0.1",
    )
    assert p.returncode != 0
    assert "learning_rat" in p.stderr


def test_cli_prints_the_result_table_once(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import CONFIG_DIR

    cmd = [sys.executable, "-m", "experiments.train", f"--workdir={tmp_path / 'w'}"]
    cmd += [f"--config={os.path.join(CONFIG_DIR, 'synthetic_listwise.py')}:runlocal"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(CONFIG_DIR))
    assert proc.returncode == 0, proc.stderr[-2000:]
    both = proc.stdout + proc.stderr
    assert both.count("| listwise (test)") == 1 and both.count("| oracle (test)") == 1
