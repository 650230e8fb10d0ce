r"""A SASRec-style sequential recommender on Amazon Beauty under BERT4Rec's protocol.

Command (one H100: about 3 min; 2 CPU cores: about 2 h, or `loss=sampled_softmax`):

  python -m experiments.train \
      --config=configs/beauty_sequential.py:data_file=../shared/data/recsys/amazon_beauty.txt \
      --workdir=/tmp/rankjax/beauty_sequential

`data_file` (default `$RANKJAX_SHARED/data/recsys/amazon_beauty.txt`) is any SASRec/BERT4Rec
`user item` file, each user's lines in time order, or a file of one user's history per
line, `user item item ...` (S3-Rec's and ICLRec's layout, e.g. `beauty_s3rec.txt`); the
layout is told from the lines (`--config.data.layout=pairs|sequences` fixes it). Split:
leave-one-out (last item test, second-to-last valid). Metrics: each held-out item ranked
against 100 items the user never interacted with, sampled by popularity over the whole log
(BERT4Rec's legacy protocol; BERT4Rec's Beauty figures: HR@10 0.3025, NDCG@10 0.1862), or
by full ranking over the catalog with the user's earlier items excluded (`protocol=full`:
Recall@10/20, NDCG@10/20, as S3-Rec, ICLRec and eSASRec report). Measured figures are in
docs/results.md.

  python -m experiments.train --workdir=/tmp/rankjax/beauty_s3rec \
      --config=configs/beauty_sequential.py:data_file=../shared/data/recsys/beauty_s3rec.txt,protocol=full

Recipe (chosen on the validation split of `beauty_s3rec.txt`, the same for every file):
2 pre-norm blocks 128 wide, 2 heads, histories of 50, item table tied with the output,
dropout 0.5, full softmax over the catalog at every position, AdamW (learning rate 1e-3,
weight decay 0.5, cosine), 8,000 steps of 128 users, the best validation NDCG@10 kept.

Arguments: `data_file=PATH`, `loss=softmax|sampled_softmax|bce`, `protocol=sampled|full`,
`dim=N`, `layers=N`, `dropout=P`, `weight_decay=W`, `max_len=N`, `positions=newest|oldest`
(count positions back from the newest item, SASRec's, or from the oldest in the window,
which lets a server append events to cached keys and values: `rankjax.incremental`),
`embedding_bits=8|4`
(also evaluate the model served with row-wise quantized tables), `towers=int8|int4|w8|fp8`
(QAT of the transformer's dense layers; integer ones served in the device's fastest form,
`quant.serving="auto"`, fp8 as e4m3 with scales calibrated once), `steps=N`,
`max_users=N`, `runlocal`.
"""

import os

import ml_collections

from rankjax import config_args
from rankjax.compression import quantization
from rankjax.data import shared_dir


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_args.parse_arg(
        arg,
        data_file=os.path.join(shared_dir(), "data", "recsys", "amazon_beauty.txt"),
        loss="softmax",
        protocol="sampled",
        dim=128,
        layers=2,
        dropout=0.5,
        weight_decay=0.5,
        max_len=50,
        positions="newest",
        embedding_bits=0,
        towers="",
        steps=0,
        max_users=0,
        runlocal=False,
    )
    c = ml_collections.ConfigDict()
    c.task = "retrieval"
    c.seed = 0
    c.data = dict(
        source="user_item",
        file=arg.data_file,
        layout="auto",  # told from the lines; "pairs" (user item) or "sequences" fixes it
        split="leave_one_out",
        max_users=arg.max_users,
    )
    c.model = dict(
        name="sasrec",
        dim=arg.dim,
        max_len=arg.max_len,
        num_layers=arg.layers,
        num_heads=2,
        dropout=arg.dropout,
        positions=arg.positions,
    )
    c.loss = dict(name=arg.loss, num_negatives=1024)
    c.optim = dict(
        name="adamw",
        learning_rate=1e-3,
        schedule="cosine",
        warmup_steps=500,
        weight_decay=arg.weight_decay,
        grad_clip_norm=1.0,
    )
    # 40,226 users: 314 batches of 128 an epoch; 8,000 steps ~ 25 epochs (with the full
    # softmax, validation NDCG@10 peaked near 4,000 steps of a 20,000-step run, then fell).
    c.train = config_args.train_section(
        num_steps=8000, batch_size=128, log_every=500, eval_every=1000
    )
    metrics = ("hit@10", "ndcg@10", "mrr@10", "hit@1", "hit@5", "ndcg@5")
    if arg.protocol == "sampled":
        retrieval = dict(type="sampled_ranking", num_negatives=100, negatives="popularity", seed=0)
    elif arg.protocol == "full":
        retrieval = dict(type="full_ranking")
        metrics = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "hit@10")
    else:
        raise ValueError(f"config argument protocol={arg.protocol!r}; valid: sampled, full")
    c.evals = dict(retrieval=dict(metrics=metrics, users_per_chunk=1024, **retrieval))
    c.ckpt = dict(every=2000, keep=1, best_metric="ndcg@10", best_mode="max")
    quant = quantization.retrieval_section(arg.towers, arg.embedding_bits)
    if quant:  # served int8/int4 tables and/or QAT towers served as integers
        c.quant = quant
    if arg.steps:
        c.train.num_steps = arg.steps
    if arg.runlocal:
        c.data.max_users = arg.max_users or 500
        c.model.update(dim=8, num_layers=1, max_len=10)
        c.loss.num_negatives = 16
        c.train = config_args.train_section(
            num_steps=arg.steps or 2, batch_size=64, log_every=1, eval_every=2
        )
        c.ckpt.every = 2
    return c
