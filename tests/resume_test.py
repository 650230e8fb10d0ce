"""Preemption: SIGKILL and SIGTERM mid-run, corrupted checkpoints, determinism."""

import importlib.metadata
import json
import os
import shutil
import signal
import time

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, start_training

from rankjax import checkpoint, trainer

# The same loop trains both tasks; each is interrupted and resumed the same way.
ARGS = {
    "ranking": ["--config=configs/synthetic_listwise.py:runlocal,steps=300"],
    "retrieval": ["--config=configs/synthetic_retrieval.py:runlocal,steps=300"],
}
COMMON = ["--config.ckpt.every=20", "--config.train.eval_every=100", "--config.train.log_every=10"]


def start(workdir, task):
    return start_training(*ARGS[task], *COMMON, f"--workdir={workdir}")


def finish(workdir, task):
    p = start(workdir, task)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    return json.loads((workdir / "results.json").read_text())


# Orbax's mark of a finished step on a local disk: `commit_success.txt` since 0.12; before,
# the step folder's metadata (the folder takes its final name when the save is done).
_ORBAX = tuple(int(p) for p in importlib.metadata.version("orbax-checkpoint").split(".")[:2])
_FINISHED = "commit_success.txt" if _ORBAX >= (0, 12) else "_CHECKPOINT_METADATA"


def _finished(step_dir):
    return (step_dir / _FINISHED).exists()


def wait_for_checkpoint(workdir, min_step, proc, timeout=120):
    """Waits until a finished checkpoint of at least `min_step` exists."""
    deadline = time.time() + timeout
    folder = workdir / "checkpoints"
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        steps = [int(d) for d in os.listdir(folder) if d.isdigit()] if folder.exists() else []
        if any(s >= min_step and _finished(folder / str(s)) for s in steps):
            return
        time.sleep(0.005)
    raise TimeoutError("no checkpoint appeared")


def train_records(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r["split"] == "train"]


@pytest.fixture(scope="module", params=sorted(ARGS))
def uninterrupted(request, tmp_path_factory):
    """`(task, results, train records)` of a run that nothing stopped."""
    workdir = tmp_path_factory.mktemp("straight")
    return request.param, finish(workdir, request.param), train_records(workdir)


def test_sigkill_then_rerun_matches_uninterrupted_run(tmp_path, uninterrupted):
    task, straight, straight_records = uninterrupted
    p = start(tmp_path, task)
    wait_for_checkpoint(tmp_path, 60, p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert not (tmp_path / "results.json").exists()
    results = finish(tmp_path, task)
    assert results["valid"] == pytest.approx(straight["valid"], rel=1e-6)
    assert results["test"] == pytest.approx(straight["test"], rel=1e-6)
    # Events logged after the last checkpoint were dropped and logged again once.
    records = train_records(tmp_path)
    assert [r["step"] for r in records] == list(range(10, 301, 10))
    np.testing.assert_allclose(
        [r["loss"] for r in records], [r["loss"] for r in straight_records], rtol=1e-6
    )


def test_sigterm_saves_a_checkpoint_and_rerun_resumes(tmp_path, uninterrupted):
    task, straight, _ = uninterrupted
    p = start(tmp_path, task)
    wait_for_checkpoint(tmp_path, 60, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM after step" in err
    stopped_at = int(err.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert _finished(tmp_path / "checkpoints" / str(stopped_at))
    results = finish(tmp_path, task)
    assert results["test"] == pytest.approx(straight["test"], rel=1e-6)


def _saved(tmp_path, steps):
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=5)
    for s in steps:
        ckpt.save(s, {"w": jnp.full([3], float(s))})
    ckpt.wait()
    return ckpt


def _corrupt(tmp_path, step):
    data = tmp_path / "checkpoints" / str(step) / "default"
    for root, _, files in os.walk(data):
        for name in files:
            if name not in ("commit_success.txt",):
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(3)


def test_unreadable_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    _saved(tmp_path, [1, 2]).close()
    _corrupt(tmp_path, 2)
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=5)
    state, step = ckpt.restore_or_init({"w": jnp.zeros([3])})
    assert step == 1
    np.testing.assert_array_equal(state["w"], [1.0, 1.0, 1.0])


def test_all_checkpoints_unreadable_is_an_error(tmp_path):
    _saved(tmp_path, [1]).close()
    _corrupt(tmp_path, 1)
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=5)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint .* can be read"):
        ckpt.restore_or_init({"w": jnp.zeros([3])})


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    def run(name):
        c = load_config("synthetic_listwise", "runlocal,steps=6")
        c.train.eval_every = 3
        return trainer.train_and_evaluate(c, str(tmp_path / name))

    first, second = run("a"), run("b")
    assert first["valid"] == second["valid"] and first["test"] == second["test"]
    shutil.rmtree(tmp_path)
