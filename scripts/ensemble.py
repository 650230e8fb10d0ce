r"""Evaluates an ensemble of trained rankers: the mean of their per-list standardised scores.

  python scripts/ensemble.py --workdirs=/tmp/rankjax/letor/seed_0,/tmp/rankjax/letor/seed_1 \
      --split=test

Every workdir must have been trained on the same data config; the data is read from the first.
Prints each member's metrics and the ensemble's, and writes nothing.
"""

import json

import numpy as np
from absl import app, flags

from rankjax import data, metrics, serving
from rankjax.data.batches import max_list_size, pad_lists
from rankjax.evaluators import section

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Workdirs of the members.")
flags.DEFINE_enum("split", "test", ["valid", "test"], "Split to evaluate.")
flags.DEFINE_list("metrics", ["ndcg@1", "ndcg@5", "ndcg@10"], "Metrics to report.")
flags.mark_flags_as_required(["workdirs"])


def standardise(scores: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Per-list z-scores over valid items, so members with different scales weigh equally."""
    n = np.maximum(where.sum(-1, keepdims=True), 1)
    mean = np.where(where, scores, 0).sum(-1, keepdims=True) / n
    var = np.where(where, (scores - mean) ** 2, 0).sum(-1, keepdims=True) / n
    return np.where(where, (scores - mean) / np.sqrt(var + 1e-12), 0)


def main(argv):
    del argv
    rankers = [serving.load(w) for w in FLAGS.workdirs]
    config = rankers[0].config
    split = data.read_splits(config.data)[FLAGS.split]
    batch = pad_lists(split, max_list_size(split))
    entry = config.evals[section.selecting(config.evals)]
    kw = dict(
        where=batch["where"],
        metrics=FLAGS.metrics,
        no_relevant=entry.get("no_relevant", "zero"),
        gain=entry.get("gain", "exp2"),
    )
    members = [r.score(batch["features"], batch["where"]) for r in rankers]
    for w, s in zip(FLAGS.workdirs, members, strict=True):
        print(w, json.dumps(metrics.evaluate(s, batch["labels"], **kw)))
    ensemble = np.mean([standardise(s, batch["where"]) for s in members], axis=0)
    print("ensemble", json.dumps(metrics.evaluate(ensemble, batch["labels"], **kw)))


if __name__ == "__main__":
    app.run(main)
