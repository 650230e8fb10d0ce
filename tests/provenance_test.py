"""What produced a result is recorded with it: versions, device, git commit."""

import json

import jax
from helpers import load_config

from rankjax import provenance, serving, trainer


def test_provenance_names_versions_device_and_commit():
    record = provenance.provenance()
    assert record["versions"]["jax"] == jax.__version__
    assert record["versions"]["rankjax"] and record["device"] == jax.devices()[0].device_kind
    git = record["git"]
    assert git is None or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))


def test_outside_a_checkout_there_is_no_commit(tmp_path):
    assert provenance.git_commit(str(tmp_path / "file.py")) is None


def test_results_and_config_json_carry_the_provenance(tmp_path):
    config = load_config("synthetic_listwise", "runlocal")
    config.mesh.num_devices = 1
    trainer.train_and_evaluate(config, str(tmp_path))
    for name in ("results.json", "config.json"):
        with open(tmp_path / name) as f:
            record = json.load(f)["provenance"]
        assert record["versions"]["flax"] and record["platform"] == jax.devices()[0].platform
    # The record is no setting: the workdir resumes, and its served ranker loads.
    trainer.train_and_evaluate(config, str(tmp_path))
    assert serving.load(str(tmp_path)).score is not None
