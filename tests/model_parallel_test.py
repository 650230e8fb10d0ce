"""Model parallelism on 8 CPU devices: a text cross-encoder trained with its heads and
feed-forward units split over a `model` axis (data=2, model=4), and fully sharded over
`data` (data=8, `mesh.fsdp`), gives one device's losses, and its parameters and optimizer
moments take a fraction of their bytes on each device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from configs_test import skip_without_shared
from helpers import ROOT

from rankjax import sharding

pytest.importorskip("tokenizers", reason="text rankers need: pip install -e '.[text]'")

SCRIPT = r"""
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import jax
from helpers import load_config
from rankjax import trainer

out = {}
for name, mesh in [
    ("one", dict(num_devices=1)),
    ("tensor", dict(num_devices=8, model=4)),
    ("fsdp", dict(num_devices=8, fsdp=True)),
]:
    c = load_config("homedepot_cross_encoder", "runlocal,steps=4")
    c.model.update(num_attention_heads=4, hidden_size=32, intermediate_size=64)
    c.data.text.pack_length = 0  # packing groups rows per data-parallel device
    c.mesh = mesh
    workdir = os.path.join(sys.argv[2], name)
    results = trainer.train_and_evaluate(c, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if r.get("split") == "train"]
    out[name] = {"losses": losses, "memory": results["memory"], "sharded": results["sharded"]}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    skip_without_shared("homedepot_cross_encoder")  # Home Depot data in ../shared
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, ROOT, str(tmp_path_factory.mktemp("mp"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and line, done.stderr[-3000:]
    return json.loads(line[0][len("RESULT ") :])


@pytest.mark.parametrize("layout", ["tensor", "fsdp"])
def test_sharded_training_gives_one_devices_losses(runs, layout):
    one, got = runs["one"]["losses"], runs[layout]["losses"]
    assert len(one) == len(got) == 4
    np.testing.assert_allclose(got, one, rtol=2e-4)


def test_tensor_parallel_splits_heads_and_units(runs):
    sharded = runs["tensor"]["sharded"]
    for name in ("attention/query/kernel", "attention/output/kernel", "intermediate/kernel"):
        assert any(s.endswith(f"layer_0/{name}") for s in sharded), (name, sharded)
    assert any(s.endswith("word_embeddings/embedding") for s in sharded), sharded
    one, tp = runs["one"]["memory"], runs["tensor"]["memory"]
    assert one["params_bytes"] == tp["params_bytes"]
    # A quarter and a little: LayerNorms and the output biases stay whole on each device.
    assert tp["params_bytes_per_device"] / one["params_bytes_per_device"] < 0.3


def test_fsdp_holds_about_an_eighth_of_the_state_per_device(runs):
    one, fsdp = runs["one"]["memory"], runs["fsdp"]["memory"]
    for key in ("params", "opt_state"):
        share = fsdp[f"{key}_bytes_per_device"] / one[f"{key}_bytes_per_device"]
        # A few small leaves (LayerNorms of 32, counters) do not split 8 ways.
        assert share < 0.2, (key, share)


def test_fsdp_puts_the_data_axis_on_the_largest_free_axis():
    assert sharding._with_data_axis((), (30, 64), 8) == (None, "data")
    assert sharding._with_data_axis((None, "model"), (64, 32), 8) == ("data", "model")
    assert sharding._with_data_axis(("data",), (64,), 8) == ("data",)
    assert sharding._with_data_axis((), (3, 5), 8) == (None, None)  # nothing divides: whole
