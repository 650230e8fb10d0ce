r"""Evaluates a recall-then-rank cascade of two finished retrieval runs and prints a table.

  python -m benchmarks.cascade_table --stage1=/tmp/rankjax/ml100k_two_tower \
      --stage2=/tmp/rankjax/ml100k_dcn --k=20,50,100 --bits=0,8 --weight=auto

Both runs must use the same interactions and split (`SPLIT_KEYS` of their `data` config
sections are compared; side features may differ).
For each K and each choice of float or int8/int4 served tables (`--bits`, applied to both
stages), the table gives stage 1's recall@K and NDCG@10, the cascade's NDCG@10 and
recall@10, stage 2 over the whole catalog, and the measured milliseconds per user of each
stage on this machine (`rankjax/cascade.py`). `--weight` is the share of stage 2's score
in the final order (`cascade.fuse`: 1 = stage 2 alone orders the candidates); `auto`
chooses it per row on the validation split (grid 0, 0.1, ..., 1), then reports test.
`--served` scores with each run's served model (integer layers where the run quantized
them). `--json=PATH` writes the rows.
"""

import numpy as np
from absl import app, flags

from benchmarks import timing
from rankjax import cascade, checkpoint
from rankjax.tasks import retrieval as tasks_retrieval

STAGE1 = flags.DEFINE_string("stage1", None, "workdir of the retrieval (recall) run", required=True)
STAGE2 = flags.DEFINE_string("stage2", None, "workdir of the ranking run", required=True)
K = flags.DEFINE_list("k", ["50"], "candidates passed from stage 1 to stage 2")
BITS = flags.DEFINE_list("bits", ["0"], "embedding bits of both stages: 0 (float), 8, 4")
WEIGHT = flags.DEFINE_string(
    "weight", "1", "stage 2's share of the final score: a number in [0, 1], or auto"
)
SERVED = flags.DEFINE_bool("served", False, "score with the runs' served (integer) models")
CHUNK = flags.DEFINE_integer("users_per_chunk", 256, "users scored per call")
JSON = flags.DEFINE_string("json", None, "also write the rows to this JSON file")

HEAD = (
    "| K   | tables | weight | stage 1 recall@K | stage 1 NDCG@10 | cascade NDCG@10 "
    "| cascade recall@10 | stage 2 alone NDCG@10 | stage 1 ms/user | stage 2 ms/user |\n"
    "|-----|--------|-------:|-----------------:|----------------:|----------------:"
    "|------------------:|----------------------:|----------------:|----------------:|"
)


# The config keys that fix the interactions and their split (side features may differ).
SPLIT_KEYS = ("source", "inter_file", "file", "world", "max_users", "split", "fractions")


def _same_data(a: tasks_retrieval.Trained, b: tasks_retrieval.Trained) -> None:
    def split_of(t):
        d = t.config.data.to_dict()
        return {k: d.get(k) for k in SPLIT_KEYS} | {"split_seed": d.get("split_seed", 0)}

    if split_of(a) != split_of(b):
        raise app.UsageError(
            f"the two runs read different data or splits: {split_of(a)} vs {split_of(b)}"
        )


def _weight(first, second, bits: int, k: int) -> tuple[float, dict[float, float] | None]:
    """`--weight` as a number, or chosen on the validation split: `(weight, {weight: valid
    NDCG@10})`."""
    if WEIGHT.value != "auto":
        try:
            weight = float(WEIGHT.value)
        except ValueError:
            raise app.UsageError(f"--weight={WEIGHT.value!r}: expected a number or auto") from None
        if not 0.0 <= weight <= 1.0:
            raise app.UsageError(f"--weight={weight} must be in [0, 1]")
        return weight, None
    train, valid = first.parts["train"], first.parts["valid"]
    return cascade.choose_weight(
        first.scorer("valid", bits, serve=SERVED.value),
        second.scorer("valid", bits, serve=SERVED.value),
        k=k,
        train=(train.users, train.items),
        held_out=(valid.users, valid.items),
        num_items=first.log.num_items,
        users_per_chunk=CHUNK.value,
    )


def main(argv):
    del argv
    first, second = tasks_retrieval.load(STAGE1.value), tasks_retrieval.load(STAGE2.value)
    _same_data(first, second)
    parts = first.parts
    seen = [parts["train"], parts["valid"]]
    env = timing.environment()
    print(f"\n{env['device']} ({env['platform']}), jax {env['jax']}; test split")
    print(HEAD)
    rows = []
    for bits in (int(b) for b in BITS.value):
        # Tables quantized once per setting, shared by every K.
        stage1 = first.scorer("test", bits, serve=SERVED.value)
        stage2 = second.scorer("test", bits, serve=SERVED.value)
        for k in (int(k) for k in K.value):
            weight, chosen_on = _weight(first, second, bits, k)
            r = cascade.evaluate(
                stage1,
                stage2,
                k=k,
                train=(
                    np.concatenate([s.users for s in seen]),
                    np.concatenate([s.items for s in seen]),
                ),
                held_out=(parts["test"].users, parts["test"].items),
                num_items=first.log.num_items,
                metrics=("ndcg@10", "recall@10"),
                users_per_chunk=CHUNK.value,
                stage2_weight=weight,
            )
            r.update(bits=bits, served=SERVED.value, valid_ndcg10_by_weight=chosen_on)
            rows.append(r)
            s1, fin, alone, ms = r["stage1"], r["final"], r["stage2_alone"], r["ms_per_user"]
            print(
                f"| {k:<3} | {'float' if not bits else f'int{bits}':<6} | {weight:6.1f} "
                f"| {s1[f'recall@{k}']:16.4f} | {s1['ndcg@10']:15.4f} | {fin['ndcg@10']:15.4f} "
                f"| {fin['recall@10']:17.4f} | {alone['ndcg@10']:21.4f} "
                f"| {ms['stage1']:15.3f} | {ms['stage2']:15.3f} |",
                flush=True,
            )
    if JSON.value:
        checkpoint.write_json(JSON.value, {"environment": env, "rows": rows})
    return 0


if __name__ == "__main__":
    app.run(main)
