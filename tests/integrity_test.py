"""Corruption is caught: checkpoints (periodic and best), served models and exported
artifacts carry checksums, verified at load; a corrupted periodic checkpoint falls back to
the one before it, a corrupted best one to the last parameters, and a corrupted artifact is
refused — each naming the file."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from rankjax import checkpoint, export, integrity, serving, trainer


def _flip_a_byte(folder):
    """Flips one bit in the middle of the largest file under `folder`; returns its path."""
    paths = [
        os.path.join(root, n)
        for root, _, names in os.walk(folder)
        for n in names
        if n != integrity.MANIFEST
    ]
    path = max(paths, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    return path


def test_a_corrupted_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=3)
    for step in (1, 2):
        ckpt.save(step, {"w": jnp.arange(64.0) * step})
    ckpt.wait()
    assert integrity.verify(str(tmp_path / "checkpoints" / "2")) is None
    bad = _flip_a_byte(tmp_path / "checkpoints" / "2")
    state, step = ckpt.restore_or_init({"w": jnp.zeros(64)})
    assert step == 1
    np.testing.assert_array_equal(state["w"], np.arange(64.0))
    assert f"{bad}: checksum mismatch" in caplog.text
    ckpt.close()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    c = load_config("synthetic_listwise_int8", "runlocal")
    trainer.train_and_evaluate(c, str(path))
    return path, c


def test_corrupted_best_parameters_are_refused_and_the_run_reports_the_last(finished):
    path, config = finished
    bad = _flip_a_byte(path / "best")
    with pytest.raises(checkpoint.CheckpointError, match=f"{bad}: checksum mismatch"):
        serving.load(str(path), "best")
    results = trainer.train_and_evaluate(config, str(path))  # the finished run, again
    assert results["params"].startswith("last (step 2)")
    assert "failed its checksums" in results["params"] and bad in results["params"]


def test_a_corrupted_served_model_and_artifact_are_refused(finished, tmp_path):
    path, _ = finished
    ranker = serving.load(str(path), "served")
    artifact = str(tmp_path / "ranker.jaxexport")
    export.save(
        ranker, artifact, num_features=export.raw_width(ranker.transform), platforms=("cpu",)
    )
    export.load(artifact)  # intact: loads
    with open(artifact, "r+b") as f:
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ValueError, match="corrupted \\(checksum mismatch"):
        export.load(artifact)
    bad = _flip_a_byte(path / "served")
    with pytest.raises(checkpoint.CheckpointError, match=f"{bad}: checksum mismatch"):
        serving.load(str(path), "served")
