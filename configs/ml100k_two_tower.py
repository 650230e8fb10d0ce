r"""Two-tower retrieval on MovieLens-100k under RecBole's protocol.

Command (about 1 min on 2 CPU cores):

  python -m experiments.train \
      --config=configs/ml100k_two_tower.py:data_dir=../shared/data/recsys \
      --workdir=/tmp/rankjax/ml100k_two_tower

`data_dir` (default `$RANKJAX_SHARED/data/recsys`) holds RecBole's atomic files
`ml-100k.inter`, `.item` and `.user`. Split: per user, interactions shuffled by a seed and
cut 80/10/10; metrics by full ranking over all 1,682 items, training (and for test,
validation) items excluded. RecBole's BPR reference: test NDCG@10 0.2768, recall@10
0.2368, hit@10 0.7614, MRR@10 0.4519. Measured figures are in docs/results.md.

Arguments: `data_dir=PATH`, `features` (use genres, year and user attributes too),
`embedding_bits=8|4` (also evaluate the towers with row-wise quantized tables),
`towers=int8|int4|w8` (quantization-aware training of the towers' dense layers, served
with integer weights),
`hash_buckets=N` (id tables of N rows under the hashing trick), `retriever=PATH,hard=K,
skip=S` (each row adds K hard negatives from ranks S..100 of a finished retrieval run's
items for its user), `text=frozen|finetune,text_layers=N` (the item tower also reads the
movie title through all-MiniLM-L6-v2: its frozen sentence embedding, or N of its layers
fine-tuned with the towers; `text_checkpoint=PATH` another BERT folder), `steps=N`, `runlocal`.
"""

import os

import ml_collections

from rankjax import config_args
from rankjax.compression import quantization
from rankjax.data import shared_dir


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_args.parse_arg(
        arg,
        data_dir=os.path.join(shared_dir(), "data", "recsys"),
        features=False,
        embedding_bits=0,
        towers="",
        hash_buckets=0,
        retriever="",
        hard=0,
        skip=0,
        text="",
        text_layers=0,
        text_checkpoint="",
        steps=0,
        runlocal=False,
    )
    c = ml_collections.ConfigDict()
    c.task = "retrieval"
    c.seed = 0
    c.data = dict(
        source="atomic",
        inter_file=os.path.join(arg.data_dir, "ml-100k.inter"),
        item_file=os.path.join(arg.data_dir, "ml-100k.item"),
        user_file=os.path.join(arg.data_dir, "ml-100k.user"),
        split="random",
        fractions=(0.8, 0.1, 0.1),
        split_seed=0,
        item_features=("class", "release_year") if arg.features else (),
        user_features=("age", "gender", "occupation") if arg.features else (),
    )
    # Temperature and width chosen on validation NDCG@10 over 15 variants (docs/results.md).
    c.model = dict(name="two_tower", dim=128, hidden=(), normalize=True, temperature=0.2)
    if arg.hash_buckets:
        c.model.hash_buckets = arg.hash_buckets
    if arg.text:  # the item tower also reads the movie title through MiniLM
        c.model.update(
            text_feature="movie_title",
            text_mode=arg.text,
            text_layers=arg.text_layers,
            text_checkpoint=arg.text_checkpoint,
        )
    c.loss = dict(name="in_batch_softmax", log_q=True)
    c.loss.update(config_args.hard_negatives(arg))
    c.optim = dict(
        name="adamw",
        learning_rate=3e-3,
        schedule="cosine",
        warmup_steps=100,
        weight_decay=1e-4,
        grad_clip_norm=0.0,
    )
    # 80,808 training interactions: 78 steps of 1,024 an epoch; 3,000 steps ~ 38 epochs.
    c.train = config_args.train_section(
        num_steps=3000, batch_size=1024, log_every=250, eval_every=250
    )
    c.evals = dict(
        retrieval=dict(
            type="full_ranking",
            metrics=("recall@10", "ndcg@10", "mrr@10", "hit@10"),
            users_per_chunk=512,
        ),
    )
    c.ckpt = dict(every=1000, keep=1, best_metric="ndcg@10", best_mode="max")
    quant = quantization.retrieval_section(arg.towers, arg.embedding_bits)
    if quant:  # served int8/int4 tables and/or QAT towers served as integers
        c.quant = quant
    if arg.steps:
        c.train.num_steps = arg.steps
    if arg.runlocal:
        c.model.dim = 8
        if arg.hard:
            c.loss.retriever_top = 10
        if arg.text:
            c.model.update(text_layers=arg.text_layers or 1, text_max_len=16)
        c.train = config_args.train_section(
            num_steps=arg.steps or 2, batch_size=256, log_every=1, eval_every=2
        )
        c.ckpt.every = 2
    return c
