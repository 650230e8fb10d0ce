r"""The compressed student, end to end: `configs/homedepot_distill.py`'s 3-layer student
with 2:4 sparsity and int8 quantization-aware training; the run converts it to integer
weights with packed 2:4 kernels, saves it, loads it back and evaluates the served model.

Command (H200: about 2 min after the teacher's run):

  python -m experiments.train \
      --config=configs/homedepot_student_int8_nm24.py:teacher=/tmp/rankjax/hd_cross \
      --workdir=/tmp/rankjax/hd_student_int8_nm24

The scoring head stays float and dense (one 384-wide vector); the embedding tables are
served row-wise int4 (post-training, one scale per 128 values). Takes the arguments of
`homedepot_distill.py`; docs/results.md has measured figures.
"""

import ml_collections

from rankjax import config_args
from rankjax.compression import quantization, sparsity


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = config_args.base_config(__file__, "homedepot_distill", arg)
    if c.model.name != "cross_encoder":
        raise ValueError("the compressed student is a cross-encoder (student=layers3|narrow)")
    steps = int(c.train.num_steps)
    # Prune the teacher-initialised weights to 2:4 over the first third of training, then
    # train with masks fixed; QAT runs throughout.
    c.sparsity = sparsity.config_section(
        "2:4",
        exclude="score",
        start_step=0,
        end_step=max(1, steps // 3),
        update_every=max(1, steps // 12),
    )
    # Embedding tables (47 MB of MiniLM's 90 MB in float32) are served as row-wise int4.
    c.quant = quantization.config_section(
        weight_bits=8, activation_bits=8, exclude="score", embedding_bits=4
    )
    return c
