"""Config values outside their range, and mistyped command-line overrides: one line naming
the key, the value and what is expected, before anything runs or is written."""

import os
import subprocess
import sys

import pytest
from configs_test import CONFIGS
from helpers import CONFIG_DIR, load_config

from rankjax import config_schema, trainer


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("train.batch_size", 0, r"train.batch_size=0: expected an integer >= 1$"),
        ("train.num_steps", -5, r"train.num_steps=-5: expected an integer >= 1$"),
        ("train.log_every", 0, r"train.log_every=0: expected an integer >= 1$"),
        ("ckpt.every", 0, r"ckpt.every=0: expected an integer >= 1$"),
        ("ckpt.keep", 0, r"ckpt.keep=0: expected an integer >= 1 \(checkpoints kept"),
        ("data.list_size", 0, r"data.list_size=0: expected an integer >= 1$"),
        ("optim.learning_rate", 0.0, r"optim.learning_rate=0.0: expected a number > 0$"),
        (
            "optim.learning_rate",
            float("nan"),
            r"optim.learning_rate=nan: expected a finite number > 0$",
        ),
        ("optim.b2", 1.0, r"optim.b2=1.0: expected a number >= 0 and < 1$"),
        ("evals.ranking.batch_size", 0, r"evals.ranking.batch_size=0: expected an integer"),
        ("mesh.num_devices", -2, r"mesh.num_devices=-2: expected -1 \(every device\)"),
    ],
)
def test_out_of_range_values_are_named_before_anything_is_written(key, value, match, tmp_path):
    config = load_config("synthetic_listwise", "runlocal")
    with config.unlocked():
        section, _, name = key.rpartition(".")
        node = config
        for part in section.split("."):
            node = node[part]
        node[name] = value
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        trainer.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


@pytest.mark.parametrize("value", [2.5, True, "8"])
def test_values_of_the_wrong_type_are_named(value):
    # Config files are Python: a float, a bool or a string can land where an int belongs.
    with pytest.raises(ValueError, match=r"train.batch_size=.*: expected an integer >= 1"):
        config_schema.check_values({"train": {"batch_size": value}})


def test_retrieval_configs_are_checked_too():
    config = load_config("synthetic_retrieval", "runlocal")
    config.train.batch_size = 0
    with pytest.raises(ValueError, match="train.batch_size=0"):
        trainer.train_and_evaluate(config, "/tmp/rankjax-never-written")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_is_in_range(name):
    config_schema.check_values(load_config(name, "runlocal"))
    config_schema.check_values(load_config(name, ""))


@pytest.mark.parametrize(
    "override, want",
    [
        (
            "--config.train.batch_sise=3",
            "--config.train.batch_sise: no key 'batch_sise' in train; closest: ['batch_size']",
        ),
        ("--config.train.batch_size=abc", "flag --config.train.batch_size=abc: invalid literal"),
    ],
)
def test_mistyped_override_is_one_line_with_the_closest_keys(override, want, tmp_path):
    cmd = [sys.executable, "-m", "experiments.train", f"--workdir={tmp_path / 'w'}"]
    cmd += [f"--config={os.path.join(CONFIG_DIR, 'synthetic_listwise.py')}:runlocal", override]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(CONFIG_DIR))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rankjax: error:")]
    assert len(lines) == 1 and want in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "name, key",
    [
        ("letor_lightgbm", "data.missing"),
        ("letor_lightgbm", "data.label_range"),
        ("letor_lightgbm", "data.num_features"),
        ("homedepot_cross_encoder", "data.missing"),
        ("homedepot_cross_encoder", "data.label_range"),
        ("beauty_sequential", "data.layout"),
    ],
)
def test_keys_that_error_messages_suggest_can_be_set_from_the_command_line(name, key):
    # `--config.a.b=v` only sets keys the config already has: the ones the readers' error
    # messages tell a user to set must be there.
    c = load_config(name)
    section, field = key.split(".")
    assert field in c[section], key
