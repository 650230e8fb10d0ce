r"""How much of what a text ranker computes is padding, with and without length bucketing.

  python scripts/text_padding.py --config=configs/homedepot_cross_encoder.py

Builds one epoch of the config's training batches (trimmed as the trainer trims them) and
prints the share of real tokens among the computed token positions, the token widths
XLA compiles, and the share of list slots that hold an item.
"""

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rankjax import data as data_lib
from rankjax.data import tokens
from rankjax.data.batches import TrainBatches

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A text ranker's config.", lock_config=False)
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    c = FLAGS.config
    train = data_lib.load(c.data).train
    lengths = tokens.list_token_lengths(train)
    size, batch = int(c.data.list_size), int(c.train.batch_size)
    multiple = int(c.data.text.get("pad_multiple", 16))
    for name, runs in (("no bucketing", 0), (f"bucket_batches={c.data.bucket_batches}", None)):
        runs = int(c.data.get("bucket_batches", 0)) if runs is None else runs
        stream = TrainBatches(train, batch, size, 0, lengths=lengths, bucket_batches=runs)
        shares, widths = [], set()
        for step in range(stream.steps_per_epoch):
            b = tokens.trim_token_axes(stream(step), multiple)
            shares.append(tokens.padding_stats(b)["tokens"])
            widths.add(b["tokens"].shape[-1])
        share = np.mean(shares)
        print(f"{name}: real tokens {share:.1%} of computed positions; widths {sorted(widths)}")
    print(f"list slots holding an item: {train.num_items / (train.num_lists * size):.1%}")


if __name__ == "__main__":
    app.run(main)
