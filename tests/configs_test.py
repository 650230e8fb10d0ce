"""Every config in configs/ builds and trains for 2 steps with `:runlocal`."""

import glob
import os

import pytest
from helpers import CONFIG_DIR, load_config

from rankjax import trainer
from rankjax.data import shared_dir

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")))
NEEDS_SHARED = {name for name in CONFIGS if name.startswith("letor")}


def test_configs_are_found():
    assert {"synthetic_listwise", "letor_lightgbm"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_two_steps(name, tmp_path):
    if name in NEEDS_SHARED and not os.path.isdir(os.path.join(shared_dir(), "data")):
        pytest.skip(f"{name} needs the shared data folder {shared_dir()}")
    config = load_config(name, "runlocal")
    assert config.train.num_steps == 2
    results = trainer.train_and_evaluate(config, str(tmp_path))
    assert results["step"] == 2
    assert results["test"] and all(v == v for v in results["test"].values())  # no NaN


@pytest.mark.parametrize("name", CONFIGS)
def test_config_docstring_gives_the_command(name):
    with open(os.path.join(CONFIG_DIR, name + ".py")) as f:
        source = f.read()
    assert f"--config=configs/{name}.py" in source


def test_seed_and_steps_are_overridable():
    c = load_config("synthetic_listwise", "steps=7")
    assert c.train.num_steps == 7 and "seed" in c
