"""The `evals` config section, in big_vision's form: named evaluations, each with a `type`.

```python
c.evals = dict(
    full=dict(type="full_ranking", metrics=("recall@10", "ndcg@10")),
    ctr=dict(type="ctr", negatives_per_positive=10),  # splits=("test",) by default
)
```

Types (a task accepts some of them; each evaluator's module documents its options):

* `ranking`: lists of items, metrics summed exactly over whole splits
  (`evaluators.ranking.RankingEvaluator`);
* `full_ranking`: each user's held-out items among the whole catalog
  (`evaluators.retrieval.FullRanking`);
* `sampled_ranking`: each held-out item among sampled negatives
  (`evaluators.retrieval.SampledRanking`);
* `ctr`: impressions of held-out items among never-seen ones, AUC / GAUC / log-loss
  (`evaluators.ctr.CtrEvaluator`).

Every evaluation runs on the splits in its `splits` option. Exactly one runs on `valid`:
it is logged during training, picks the best checkpoint (`ckpt.best_metric` is one of its
metrics) and reports as `results["valid"]` / `results["test"]`; any other evaluation
reports as `results["test_<name>"]`, and the served model's as `test_served[_<name>]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from rankjax import metrics

SPLITS = ("valid", "test")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One evaluation type's config keys.

    Attributes:
      required, optional: its keys besides `type` and `splits`.
      names: the metric names it computes (`metrics.LIST_NAMES`, ...: kinds and cutoff
        rules), or None for a fixed set.
      splits: its default `splits`.
    """

    required: frozenset[str]
    optional: frozenset[str]
    names: Mapping[str, str] | None
    splits: tuple[str, ...] = SPLITS


TYPES: dict[str, Spec] = {
    "ranking": Spec(
        frozenset({"metrics", "batch_size"}),
        frozenset(
            {"report", "no_relevant", "gain", "min_list_size", "calibrate_rmse", "baselines"}
        ),
        metrics.LIST_NAMES,
    ),
    "full_ranking": Spec(
        frozenset({"metrics"}), frozenset({"users_per_chunk"}), metrics.TOP_K_NAMES
    ),
    "sampled_ranking": Spec(
        frozenset({"metrics"}),
        frozenset({"users_per_chunk", "num_negatives", "negatives", "seed"}),
        metrics.SAMPLED_NAMES,
    ),
    "ctr": Spec(
        frozenset({"negatives_per_positive"}),
        frozenset({"seed", "users_per_chunk"}),
        None,
        splits=("test",),
    ),
}


def splits_of(entry: Mapping[str, Any]) -> tuple[str, ...]:
    """The splits an `evals` entry runs on: its `splits`, else its type's default."""
    return tuple(entry.get("splits", TYPES[entry["type"]].splits))


def report_columns(entry: Mapping[str, Any]) -> tuple[str, ...]:
    """The metrics a result table shows for an `evals` entry: its `report` (else its
    `metrics`), then `rmse_calibrated` where the entry computes it (`calibrate_rmse`)."""
    columns = tuple(entry.get("report", entry.get("metrics", ())))
    return columns + (("rmse_calibrated",) if entry.get("calibrate_rmse") else ())


def validate(config: Mapping[str, Any], types: tuple[str, ...], task: str) -> None:
    """Checks the `evals` section of a config for a task that accepts `types`.

    Raises:
      ValueError: naming the entry and key: a missing section (or the `eval` section of
        configs written before `evals`), an unknown type or key, a missing key, an unknown
        metric name, a split other than valid/test, or not exactly one evaluation on
        `valid`.
    """
    if "eval" in config:
        raise ValueError(
            "config key `eval` is the old form of the `evals` section: write "
            "evals=dict(<name>=dict(type=..., metrics=..., ...)) (see rankjax/evaluators/"
            "section.py); `eval.use_best` is now `ckpt.use_best`"
        )
    evals = config.get("evals")
    if not evals:
        raise ValueError(f"config is missing the evals section (task={task}); see {__name__}")
    for name, entry in evals.items():
        where = f"evals.{name}"
        if not isinstance(entry, (Mapping, ml_collections.ConfigDict)) or "type" not in entry:
            raise ValueError(f"{where} must be a dict with a `type`; valid types: {list(types)}")
        kind = entry["type"]
        if kind not in types:
            raise ValueError(f"{where}.type={kind!r}; valid for task={task}: {list(types)}")
        spec = TYPES[kind]
        valid = spec.required | spec.optional | {"type", "splits"}
        for key in entry:
            if key not in valid:
                raise ValueError(f"unknown config key {where}.{key}; valid: {sorted(valid)}")
        missing = sorted(spec.required - set(entry))
        if missing:
            raise ValueError(f"config {where} is missing {missing}")
        for metric in entry.get("metrics", ()):
            if spec.names is not None:
                metrics.parse_metric(metric, spec.names)
        unknown = [m for m in entry.get("report", ()) if m not in entry["metrics"]]
        if unknown:
            raise ValueError(f"{where}.report names {unknown}, which are not in its metrics")
        splits = splits_of(entry)
        if not splits or any(s not in SPLITS for s in splits):
            raise ValueError(f"{where}.splits={splits}; valid: one or both of {SPLITS}")
        negatives = entry.get("negatives", "popularity")
        if negatives not in ("popularity", "uniform"):
            raise ValueError(f"{where}.negatives={negatives!r}; valid: popularity, uniform")
    selecting(evals)


def selecting(evals: Mapping[str, Any]) -> str:
    """The name of the one evaluation that runs on `valid` (module docstring).

    Raises:
      ValueError: none or several do.
    """
    on_valid = sorted(name for name, entry in evals.items() if "valid" in splits_of(entry))
    if len(on_valid) != 1:
        raise ValueError(
            f"exactly one evals entry must run on 'valid' (it picks the best checkpoint); "
            f"{on_valid or 'none'} do: set the others' splits=('test',)"
        )
    return on_valid[0]


def result_key(evals: Mapping[str, Any], name: str, split: str, served: bool = False) -> str:
    """`results.json` key of evaluation `name` on `split`: `test`, `test_served`,
    `test_ctr`, `test_served_ctr`, ..."""
    key = f"{split}_served" if served else split
    return key if name == selecting(evals) else f"{key}_{name}"
