"""Paired significance tests between two rankers' per-query metric values.

To claim that ranker B beats ranker A, compare their values on the same queries (for
example `metrics.evaluate(..., per_query=True)[1]["ndcg@10"]` of each): the per-query
differences `d = b - a` are paired, so the tests ask whether their mean is 0.

* `"t"`: the paired (dependent-samples) Student t-test, two-sided:
  `t = mean(d) / (std(d, ddof=1) / sqrt(n))` with `n - 1` degrees of freedom; the
  confidence interval is `mean(d) ± t_{1-α/2} · std(d) / sqrt(n)`.
* `"bootstrap"`: the paired bootstrap test (Efron & Tibshirani; Sakai, SIGIR 2006):
  queries are resampled with replacement `n_resamples` times; the two-sided p-value is the
  share of resampled means of the centred differences `d - mean(d)` at least as far from 0
  as `mean(d)` (plus one, over `n_resamples + 1`, so it is never 0); the confidence interval
  is the percentile interval of the resampled means of `d`.

Queries where either ranker's value is NaN (a list that did not count) are left out of both.
With many comparisons, correct the p-values (e.g. Holm–Bonferroni); a small p-value with a
tiny `mean_diff` is a real but unimportant difference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

METHODS = ("t", "bootstrap")


def _paired(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"per-query values must be two 1-D arrays over the same queries; got shapes "
            f"{a.shape} and {b.shape}"
        )
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 2:
        raise ValueError(f"{int(keep.sum())} queries with values for both rankers; need >= 2")
    return b[keep] - a[keep]


def paired_test(
    a: Any,
    b: Any,
    method: str = "t",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Tests whether ranker `b`'s mean per-query value differs from ranker `a`'s.

    Args:
      a: `[num_queries]` ranker A's per-query values (NaN: not counted).
      b: `[num_queries]` ranker B's values on the same queries, in the same order.
      method: `"t"` (paired t-test) or `"bootstrap"` (paired bootstrap); module docstring.
      confidence: level of the confidence interval of the mean difference.
      n_resamples: bootstrap resamples.
      seed: the bootstrap's random seed (results are reproducible).

    Returns:
      `{"mean_diff": mean of b - a, "p_value": two-sided, "ci_low", "ci_high": the
      interval of the mean difference, "n": queries compared}`.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; valid: {list(METHODS)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}; valid: between 0 and 1")
    d = _paired(a, b)
    n, mean = len(d), float(d.mean())
    alpha = 1 - confidence
    if method == "t":
        from scipy import stats  # a dependency of jax

        se = float(d.std(ddof=1)) / math.sqrt(n)
        if se == 0:  # every difference equal: no spread to test against
            p = 1.0 if mean == 0 else 0.0
            return {"mean_diff": mean, "p_value": p, "ci_low": mean, "ci_high": mean, "n": n}
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), n - 1))
        half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
        return {"mean_diff": mean, "p_value": p, "ci_low": mean - half, "ci_high": mean + half,
                "n": n}  # fmt: skip
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples}; valid: >= 1")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):  # bounded memory: 1,000 resamples at a time
        rows = rng.integers(0, n, size=(min(1000, n_resamples - start), n))
        means[start : start + len(rows)] = d[rows].mean(axis=1)
    extreme = np.abs(means - mean) >= abs(mean) - 1e-15  # the centred statistic
    p = float((extreme.sum() + 1) / (n_resamples + 1))
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean_diff": mean, "p_value": min(p, 1.0), "ci_low": float(low),
            "ci_high": float(high), "n": n}  # fmt: skip
