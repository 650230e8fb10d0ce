"""A workdir belongs to one run: a second process is refused, a different config is refused
before anything is written, and planted links never make a run write outside it."""

import json
import os

import pytest
from helpers import load_config

from rankjax import files, trainer, workdir


def _config(steps=2, **over):
    c = load_config("synthetic_listwise", f"runlocal,steps={steps}")
    for key, value in over.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run's workdir, and a snapshot of its files' contents."""
    path = tmp_path_factory.mktemp("run")
    trainer.train_and_evaluate(_config(), str(path))
    return path


def _snapshot(path):
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def test_another_config_is_refused_before_anything_is_written(finished):
    before = _snapshot(finished)
    with pytest.raises(workdir.WorkdirError, match=r"optim.learning_rate: .* -> 0\.5"):
        trainer.train_and_evaluate(_config(**{"optim.learning_rate": 0.5}), str(finished))
    assert _snapshot(finished) == before


def test_resuming_with_more_steps_is_the_same_run(tmp_path):
    trainer.train_and_evaluate(_config(steps=2), str(tmp_path))
    results = trainer.train_and_evaluate(_config(steps=3), str(tmp_path))  # num_steps may grow
    assert results["step"] == 3


def test_a_deliberate_change_is_allowed_and_recorded(tmp_path):
    trainer.train_and_evaluate(_config(), str(tmp_path))
    changed = _config(**{"optim.learning_rate": 0.5})
    trainer.train_and_evaluate(changed, str(tmp_path), allow_config_change=True)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["optim"]["learning_rate"] == 0.5


def test_a_second_run_is_refused_while_the_first_holds_the_workdir(tmp_path):
    plain = json.loads(_config().to_json_best_effort())
    with workdir.claim(str(tmp_path), plain):
        with pytest.raises(
            workdir.WorkdirError, match=rf"in use by another run \(pid {os.getpid()}"
        ):
            trainer.train_and_evaluate(_config(), str(tmp_path))
    trainer.train_and_evaluate(_config(), str(tmp_path))  # released: runs


def test_planted_links_do_not_make_a_run_write_outside(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    for name in (".write_test.0", f"config.json.tmp.{os.getpid()}", workdir.LOCK):
        os.symlink(outside, run / name)
    trainer.train_and_evaluate(_config(), str(run))
    assert outside.read_text() == "keep"
    with open(run / "config.json") as f:
        assert json.load(f)["model"]["name"] == "listwise"


def test_appending_through_a_link_is_an_error_naming_it(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.symlink(target, tmp_path / "metrics.jsonl")
    with pytest.raises(OSError, match="metrics.jsonl is a symbolic link"):
        files.open_append(str(tmp_path / "metrics.jsonl"))
    files.write_atomic(str(tmp_path / "metrics.jsonl"), "replaced\n")  # replaces the link
    assert target.read_text() == "" and (tmp_path / "metrics.jsonl").read_text() == "replaced\n"


def test_differences_name_keys_and_leave_resumable_ones_out():
    old = {"train": {"num_steps": 2, "batch_size": 8}, "model": {"name": "mlp"}}
    new = {"train": {"num_steps": 9, "batch_size": 16}, "model": {"name": "mlp", "dim": 4}}
    assert workdir.differences(old, new) == [
        "model.dim: '<absent>' -> 4",
        "train.batch_size: 8 -> 16",
    ]


def test_disk_full_is_one_line_naming_the_workdir():
    import errno

    e = OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/4/x")
    line = workdir.disk_full_message(e, "/w")
    assert "\n" not in line and "workdir /w (/w/checkpoints/4/x)" in line
    assert "rerun the same command to resume" in line
