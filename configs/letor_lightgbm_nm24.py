r"""`configs/letor_lightgbm.py` with 2:4 structured sparsity.

Dense training for the first third of the steps, 2:4 masks (by magnitude) re-chosen every
1/12 of the run until two thirds, then fine-tuning with fixed masks; the scoring layer stays
dense.

Command:

  python -m experiments.train --config=configs/letor_lightgbm_nm24.py \
      --workdir=/tmp/rankjax/letor_lightgbm_nm24

Takes the base config's arguments (`:data_dir=PATH`, `:runlocal`); docs/results.md has
measured figures.
"""

import ml_collections

from rankjax import config_args
from rankjax.compression import sparsity


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = config_args.base_config(__file__, "letor_lightgbm", arg)
    steps = c.train.num_steps
    c.sparsity = sparsity.config_section(
        "2:4",
        exclude=r"^Dense_2/",
        start_step=steps // 3,
        end_step=2 * steps // 3,
        update_every=max(steps // 12, 1),
    )
    return c
