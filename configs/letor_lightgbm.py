r"""A feature ranker on LightGBM's lambdarank example data (rank.train / rank.test).

Command (about 15 s on 2 CPU cores):

  python -m experiments.train \
      --config=configs/letor_lightgbm.py:data_dir=../shared/data/letor_lightgbm \
      --workdir=/tmp/rankjax/letor

`data_dir` defaults to `$RANKJAX_SHARED/data/letor_lightgbm`. 201 training queries (20% held
out by query for validation), 50 test queries, 300 features in [0, 1], labels 0-4.
Known reference figures on rank.test: LightGBM LGBMRanker NDCG@10 0.740, ridge 0.704,
random 0.619. This config (MLP on rank-Gauss features), mean ± std over 5 seeds
(docs/results.md): NDCG@1/5/10 = 0.596 / 0.677 / 0.756 (± 0.009 on NDCG@10); random 0.573.

Arguments: `data_dir=PATH`, `model=mlp|listwise`, `runlocal`, `steps=N`.
"""

import os

import ml_collections

from rankjax import config_args
from rankjax.data import shared_dir


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_args.parse_arg(
        arg,
        data_dir=os.path.join(shared_dir(), "data", "letor_lightgbm"),
        model="mlp",
        runlocal=False,
        steps=0,
    )
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(
        source="libsvm",
        train_file=os.path.join(arg.data_dir, "rank.train"),
        valid_file="",
        valid_fraction=0.2,
        test_file=os.path.join(arg.data_dir, "rank.test"),
        num_features=300,
        label_range=(0.0, 4.0),  # LETOR's relevance grades; others are refused
        missing="reject",  # or "impute": NaN/NULL values filled, with indicator features
        split_seed=0,
        list_size=32,
        shards=0,  # blocks of queries read by separate processes; 0: one per process
        transforms=("quantile", "standardize"),
    )
    c.model = dict(
        name="mlp",
        hidden_sizes=(256, 128),
        dropout_rate=0.3,
        input_noise=0.0,
        layer_norm=True,
        dtype="float32",
    )
    if arg.model == "listwise":
        c.model = dict(
            name="listwise",
            d_model=64,
            num_layers=2,
            num_heads=4,
            mlp_dim=128,
            head_hidden=64,
            dropout_rate=0.3,
            input_noise=0.0,
            dtype="float32",
        )
    elif arg.model != "mlp":
        raise ValueError(f"config argument model={arg.model!r}; valid: mlp, listwise")
    c.loss = dict(name="softmax", lambdaweight="none", temperature=1.0, max_label=4.0)
    c.optim = dict(
        name="adamw",
        learning_rate=1e-3,
        schedule="cosine",
        warmup_steps=50,
        weight_decay=1e-3,
        grad_clip_norm=1.0,
    )
    c.train = config_args.train_section(num_steps=600, batch_size=16, log_every=50, eval_every=100)
    c.evals = dict(
        ranking=dict(
            type="ranking",
            batch_size=16,
            metrics=("ndcg@1", "ndcg@5", "ndcg@10", "mrr", "map"),
            report=("ndcg@1", "ndcg@5", "ndcg@10"),
            no_relevant="zero",
            gain="exp2",
        ),
    )
    c.ckpt = dict(every=200, keep=2, best_metric="ndcg@10", best_mode="max", use_best=True)
    c.mesh = dict(num_devices=-1, rules=())
    if arg.steps:
        c.train.num_steps = arg.steps
    if arg.runlocal:
        if arg.model == "mlp":
            c.model.hidden_sizes = (8,)
        else:
            c.model.update(d_model=8, num_layers=1, num_heads=2, mlp_dim=16, head_hidden=8)
        c.train = config_args.train_section(
            num_steps=arg.steps or 2, batch_size=8, log_every=1, eval_every=2
        )
        c.evals.ranking.batch_size = 8
        c.ckpt.every = 2
    return c
