r"""Runs one config over several seeds and prints mean ± std of the test metrics.

  python scripts/run_seeds.py --config=configs/letor_lightgbm.py --seeds=5 \
      --workdir=/tmp/rankjax/letor_seeds [--config.model.hidden_sizes='()']

Each seed trains in WORKDIR/seed_N (an existing finished run is reused); the table compares
the model (and its served form) with the baselines of the same evaluation (random, oracle,
and those the config names), over the columns the run's own table shows.
"""

import json

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
flags.mark_flags_as_required(["config", "workdir"])


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


def main(argv):
    del argv
    runs = []
    for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
        config = FLAGS.config.copy_and_resolve_references()
        config.seed = seed
        if FLAGS.vary_split:
            config.data.split_seed = seed
        runs.append(trainer.train_and_evaluate(config, f"{FLAGS.workdir}/seed_{seed}"))
    entry = FLAGS.config.evals[section.selecting(FLAGS.config.evals)]
    lines, summary = seed_table(runs, section.report_columns(entry))
    print(f"\n{FLAGS.seeds} seeds, test split, mean ± std")
    print("\n".join(lines))
    with open(f"{FLAGS.workdir}/seeds.json", "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    app.run(main)
