r"""`configs/synthetic_listwise_nm24.py` with int8 QAT on top: prune to 2:4, then quantize the kept
weights (zeros stay zero under symmetric int8), convert and serve the integer model.

Command:

  python -m experiments.train --config=configs/synthetic_listwise_int8_nm24.py \
      --workdir=/tmp/rankjax/synthetic_listwise_int8_nm24

Takes the base config's arguments; docs/results.md has measured figures.
"""

import ml_collections

from rankjax import config_args
from rankjax.compression import quantization


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = config_args.base_config(__file__, "synthetic_listwise_nm24", arg)
    c.quant = quantization.config_section(weight_bits=8, activation_bits=8)
    return c
