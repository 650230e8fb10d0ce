r"""`configs/synthetic_listwise.py` with int8 quantization-aware training (AQT).

Weights int8 per output channel, activations int8 per row (dynamic ranges), backward pass in
float (straight-through). After training the weights are converted to integers, saved to
WORKDIR/served/ without the float kernels, and the served model is evaluated
(`valid_served` / `test_served` in results.json).

Command:

  python -m experiments.train --config=configs/synthetic_listwise_int8.py \
      --workdir=/tmp/rankjax/synthetic_listwise_int8

Takes the base config's arguments (e.g. `:runlocal`); docs/results.md has measured figures.
`--config.quant.mode=ptq` trains in float and quantizes afterwards (post-training quantization).
"""

import ml_collections

from rankjax import config_args
from rankjax.compression import quantization


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = config_args.base_config(__file__, "synthetic_listwise", arg)
    c.quant = quantization.config_section(weight_bits=8, activation_bits=8)
    return c
