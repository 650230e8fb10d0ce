r"""Runs one config over several seeds and prints mean ± std of the test metrics.

  python scripts/run_seeds.py --config=configs/letor_lightgbm.py --seeds=5 \
      --workdir=/tmp/rankjax/letor_seeds [--config.model.hidden_sizes='()']

Each seed trains in WORKDIR/seed_N (an existing finished run is reused); the table compares
the model (and its served form) with the baselines of the same evaluation (random, oracle,
and those the config names), over the columns the run's own table shows.

  python scripts/run_seeds.py --runs=/tmp/rankjax/student/seed_0,/tmp/rankjax/student/seed_1

summarises finished runs instead (e.g. students each distilled from another seed's
teacher), with the columns of the first run's `config.json`.
"""

import json
import os

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rankjax import trainer
from rankjax.evaluators import section

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=False)
flags.DEFINE_string("workdir", None, "Folder holding one run per seed.")
flags.DEFINE_integer("seeds", 5, "Number of seeds (0 .. seeds-1).")
flags.DEFINE_integer("first_seed", 0, "Seeds run from first_seed to first_seed + seeds - 1.")
flags.DEFINE_bool(
    "vary_split",
    False,
    "Also set data.split_seed to the seed: each run holds out other "
    "validation queries (for cross-validation bagging with scripts/ensemble.py).",
)
flags.DEFINE_list(
    "runs",
    [],
    "Finished workdirs to summarise instead of training (then --config and --workdir "
    "are not used).",
)


def seed_table(runs: list[dict], columns: tuple[str, ...]) -> tuple[list[str], dict]:
    """Mean ± std (ddof 1) over seeds of the test metrics of each ranker: the model, the
    served model, every baseline of the runs.

    Args:
      runs: each seed's `results.json` content.
      columns: the metrics shown (`section.report_columns`).

    Returns:
      `(markdown lines, {ranker: {metric: [value per seed]}})`.
    """
    rows = {"model": [r["test"] for r in runs]}
    if "test_served" in runs[0]:
        rows["served"] = [r["test_served"] for r in runs]
    for name in runs[0].get("baselines", {}):
        rows[name] = [r["baselines"][name]["test"] for r in runs]
    lines = ["| ranker | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    summary = {}
    for ranker, results in rows.items():
        cells = []
        for m in columns:
            values = np.array([r[m] for r in results])
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():.4f} ± {std:.4f}")
            summary.setdefault(ranker, {})[m] = values.tolist()
        lines.append(f"| {ranker} | " + " | ".join(cells) + " |")
    return lines, summary


def finished_runs(workdirs: list[str]) -> tuple[list[dict], ml_collections.ConfigDict]:
    """The `results.json` of each finished workdir and the first one's config.

    Raises:
      FileNotFoundError: a workdir without `results.json` (unfinished), named.
    """
    runs = []
    for w in workdirs:
        path = os.path.join(w, "results.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"--runs: {path} does not exist (the run has not finished)")
        with open(path) as f:
            runs.append(json.load(f))
    with open(os.path.join(workdirs[0], "config.json")) as f:
        return runs, ml_collections.ConfigDict(json.load(f))


def main(argv):
    del argv
    if FLAGS.runs:
        try:
            runs, config = finished_runs(FLAGS.runs)
        except FileNotFoundError as e:
            raise app.UsageError(str(e)) from None
        title = f"{len(runs)} runs"
    else:
        if FLAGS.config is None or FLAGS.workdir is None:
            raise app.UsageError("--config and --workdir are required (or --runs)")
        runs, config = [], FLAGS.config
        for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
            one = FLAGS.config.copy_and_resolve_references()
            one.seed = seed
            if FLAGS.vary_split:
                one.data.split_seed = seed
            runs.append(trainer.train_and_evaluate(one, f"{FLAGS.workdir}/seed_{seed}"))
        title = f"{FLAGS.seeds} seeds"
    entry = config.evals[section.selecting(config.evals)]
    lines, summary = seed_table(runs, section.report_columns(entry))
    print(f"\n{title}, test split, mean ± std")
    print("\n".join(lines))
    if not FLAGS.runs:
        with open(f"{FLAGS.workdir}/seeds.json", "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    app.run(main)
