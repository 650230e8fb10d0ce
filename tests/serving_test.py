"""A trained ranker loaded from its workdir scores raw features as the trainer evaluated it."""

import jax
import numpy as np
import pytest
from helpers import load_config

from rankjax import data, metrics, serving, trainer
from rankjax.data.batches import max_list_size, pad_lists


def test_loaded_ranker_reproduces_the_final_test_metrics(tmp_path):
    config = load_config("synthetic_listwise", "runlocal,steps=4")
    config.mesh.num_devices = 1
    results = trainer.train_and_evaluate(config, str(tmp_path))
    ranker = serving.load(str(tmp_path))
    test = data.read_splits(config.data)["test"]
    batch = pad_lists(test, max_list_size(test))
    scores = ranker.score(batch["features"], batch["where"])
    got = metrics.evaluate(
        scores, batch["labels"], where=batch["where"], metrics=tuple(config.evals.ranking.metrics)
    )
    assert got == pytest.approx(results["test"], rel=1e-5)
    assert np.asarray(ranker.score(batch["features"][:1])).shape == (1, batch["where"].shape[1])


def test_loading_a_folder_that_is_not_a_workdir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json: no such file"):
        serving.load(str(tmp_path))


def test_served_int8_nm24_model_loads_from_its_packed_form(tmp_path):
    config = load_config("synthetic_listwise_int8_nm24", "runlocal,steps=4")
    config.mesh.num_devices = 1
    results = trainer.train_and_evaluate(config, str(tmp_path))
    ranker = serving.load(str(tmp_path), params="served")
    test = data.read_splits(config.data)["test"]
    batch = pad_lists(test, max_list_size(test))
    got = metrics.evaluate(
        ranker.score(batch["features"], batch["where"]),
        batch["labels"],
        where=batch["where"],
        metrics=tuple(config.evals.ranking.metrics),
    )
    assert got == pytest.approx(results["test_served"], rel=1e-5)
    kernels = [
        p
        for p, _ in jax.tree_util.tree_leaves_with_path(ranker.variables["params"])
        if p[-1].key == "kernel"
    ]
    assert kernels == []  # every layer is quantized: the served model has no float kernel
