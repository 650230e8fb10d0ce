"""scripts/run_seeds.py's table: mean ± sample std over seeds, every ranker of the runs."""

import importlib.util
import json
import os

import numpy as np
import pytest
from helpers import ROOT

from rankjax.evaluators import section


@pytest.fixture(scope="module")
def run_seeds():
    path = os.path.join(ROOT, "scripts", "run_seeds.py")
    spec = importlib.util.spec_from_file_location("run_seeds_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(model, served, tfidf):
    return {
        "test": {"ndcg@5": model, "rmse_calibrated": 1 - model},
        "test_served": {"ndcg@5": served, "rmse_calibrated": 1 - served},
        "baselines": {
            "random": {"test": {"ndcg@5": 0.5, "rmse_calibrated": 0.6}},
            "tfidf": {"test": {"ndcg@5": tfidf, "rmse_calibrated": 0.4}},
        },
    }


def test_seed_table_is_mean_and_sample_std_of_each_ranker(run_seeds):
    runs = [_run(0.80, 0.79, 0.70), _run(0.84, 0.82, 0.72), _run(0.82, 0.80, 0.74)]
    lines, summary = run_seeds.seed_table(runs, ("ndcg@5", "rmse_calibrated"))
    assert lines[0] == "| ranker | ndcg@5 | rmse_calibrated |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| model",
        "| served",
        "| random",
        "| tfidf",
    ]
    # model: mean 0.82, sample std sqrt(((-.02)^2 + .02^2 + 0) / 2) = 0.02
    assert lines[2] == "| model | 0.8200 ± 0.0200 | 0.1800 ± 0.0200 |"
    assert lines[5].startswith("| tfidf | 0.7200 ± 0.0200 |")
    assert summary["served"]["ndcg@5"] == [0.79, 0.82, 0.80]
    np.testing.assert_allclose(np.std(summary["random"]["rmse_calibrated"]), 0.0)


def test_one_seed_has_zero_spread(run_seeds):
    lines, _ = run_seeds.seed_table([_run(0.8, 0.8, 0.7)], ("ndcg@5",))
    assert lines[2] == "| model | 0.8000 ± 0.0000 |"


def test_finished_runs_are_read_with_the_first_runs_config(run_seeds, tmp_path):
    evals = {"ranking": {"splits": ["valid", "test"], "report": ["ndcg@5"], "calibrate_rmse": True}}
    dirs = []
    for k, model in enumerate((0.80, 0.84)):
        d = tmp_path / f"seed_{k}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(_run(model, model, 0.7)))
        (d / "config.json").write_text(json.dumps({"seed": k, "evals": evals}))
        dirs.append(str(d))
    runs, config = run_seeds.finished_runs(dirs)
    assert [r["test"]["ndcg@5"] for r in runs] == [0.80, 0.84]
    assert config.seed == 0
    lines, _ = run_seeds.seed_table(runs, section.report_columns(config.evals.ranking))
    assert lines[0] == "| ranker | ndcg@5 | rmse_calibrated |"
    with pytest.raises(FileNotFoundError, match="seed_9/results.json"):
        run_seeds.finished_runs([dirs[0], str(tmp_path / "seed_9")])
