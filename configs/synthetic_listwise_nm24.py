r"""`configs/synthetic_listwise.py` with 2:4 structured sparsity.

Dense training for 500 steps, then 2:4 masks (2 of every 4 consecutive input weights kept,
by magnitude) re-chosen every 100 steps until step 1000, then 500 steps of fine-tuning with
fixed masks. The input projection (17 features, not a multiple of 4) and the scoring layer
stay dense. Masks live in the optimizer state; pruned weights are exact zeros.

Command:

  python -m experiments.train --config=configs/synthetic_listwise_nm24.py \
      --workdir=/tmp/rankjax/synthetic_listwise_nm24

Takes the base config's arguments (e.g. `:runlocal`); docs/results.md has measured figures.
"""

import ml_collections

from rankjax import config_args
from rankjax.compression import sparsity


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = config_args.base_config(__file__, "synthetic_listwise", arg)
    steps = c.train.num_steps
    c.sparsity = sparsity.config_section(
        "2:4",
        exclude=r"^Dense_0/|^Dense_2/",
        start_step=steps // 3,
        end_step=2 * steps // 3,
        update_every=max(steps // 15, 1),
    )
    return c
