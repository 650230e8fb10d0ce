"""What produced a result is recorded with it: versions, device, git commit."""

import json

import jax
from helpers import load_config

from rankjax import provenance, trainer


def test_provenance_names_versions_device_and_commit():
    record = provenance.provenance()
    assert record["versions"]["jax"] == jax.__version__
    assert record["versions"]["rankjax"] and record["device"] == jax.devices()[0].device_kind
    git = record["git"]
    assert git is None or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))


def test_outside_a_checkout_there_is_no_commit(tmp_path):
    assert provenance.git_commit(str(tmp_path / "file.py")) is None


def test_results_json_carries_the_provenance(tmp_path):
    config = load_config("synthetic_listwise", "runlocal")
    config.mesh.num_devices = 1
    trainer.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "results.json") as f:
        record = json.load(f)["provenance"]
    assert record["versions"]["flax"] and record["platform"] == jax.devices()[0].platform
