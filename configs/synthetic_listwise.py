r"""Quickstart: a listwise self-attention ranker on the embedded synthetic shop.

Command (72 s on 2 CPU cores, 24 s on one H100):

  python -m experiments.train --config=configs/synthetic_listwise.py \
      --workdir=/tmp/rankjax/quickstart

Expected test metrics (3000 queries, ~300 test lists; measured in docs/results.md):
NDCG@5 0.917, NDCG@10 0.936, MRR 0.997 (mean of 3 seeds), against the oracle's 0.941 /
0.957 / 1.0 and a random ranker's 0.42 / 0.51 / 0.81.

Arguments (`:key=value,flag`): `runlocal` shrinks everything for tests; `steps=N` overrides
the step count.
"""

import ml_collections

from rankjax import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_args.parse_arg(arg, runlocal=False, steps=0)
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = dict(
        source="synthetic",
        world=dict(seed=0, num_queries=3000, num_products=5000),
        split=(0.8, 0.1, 0.1),
        split_seed=0,
        list_size=40,  # training lists: the world's longest list, so nothing is cut
        shards=0,  # blocks of queries read by separate processes; 0: one per process
        transforms=("log1p", "standardize"),
    )
    c.model = dict(
        name="listwise",
        d_model=64,
        num_layers=2,
        num_heads=4,
        mlp_dim=128,
        head_hidden=64,
        dropout_rate=0.1,
        dtype="float32",
    )
    c.loss = dict(name="softmax", lambdaweight="none", temperature=1.0, max_label=3.0)
    c.optim = dict(
        name="adamw",
        learning_rate=2e-3,
        schedule="cosine",
        warmup_steps=100,
        weight_decay=1e-4,
        grad_clip_norm=1.0,
    )
    # Ten steps a compiled call: this model's step takes an accelerator less time than
    # the host takes to dispatch one (docs/results.md, the quickstart's input pipeline).
    c.train = config_args.train_section(
        num_steps=1500, batch_size=64, log_every=100, eval_every=500, steps_per_call=10
    )
    c.evals = dict(
        ranking=dict(
            type="ranking",
            batch_size=128,
            metrics=(
                "ndcg@1",
                "ndcg@5",
                "ndcg@10",
                "mrr",
                "map",
                "recall@10",
                "precision@5",
                "pairwise_accuracy",
            ),
            report=("ndcg@5", "ndcg@10", "mrr"),
            no_relevant="zero",
            gain="exp2",
        ),
    )
    c.ckpt = dict(every=500, keep=2, best_metric="ndcg@10", best_mode="max", use_best=True)
    c.mesh = dict(num_devices=-1, rules=())

    if arg.steps:
        c.train.num_steps = arg.steps
    if arg.runlocal:
        c.data.world = dict(seed=0, num_queries=200, num_products=500, num_users=20)
        c.model.update(d_model=8, num_layers=1, num_heads=2, mlp_dim=16, head_hidden=8)
        c.train = config_args.train_section(
            num_steps=arg.steps or 2, batch_size=8, log_every=1, eval_every=2
        )
        c.evals.ranking.batch_size = 16
        c.ckpt.every = 2
    return c
