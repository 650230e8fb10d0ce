"""Data: sources chosen by `config.data.source`, split by query, transformed for training.

* `sources.py`: the registry of sources — ranking lists (synthetic, LibSVM, judgments CSV)
  and interaction logs (synthetic, `user item` files, RecBole atomic files).
* `dataset.py`, `splits.py`, `transforms.py`, `batches.py`: the lists in memory, their
  splits by query, feature transforms fitted on train, padded batches.
* `tokenizer.py`, `tokens.py`: WordPiece ids for text rankers.
* `interactions.py`: user-item logs and their recommendation splits.
* `pipeline.py`: `load(config.data)`, all of the above in order.

The data package imports no model.
"""

from rankjax.data import synthetic
from rankjax.data.dataset import RankingDataset
from rankjax.data.pipeline import Splits, load, tokenized
from rankjax.data.sources import SOURCES, read_log, read_splits, shared_dir
from rankjax.data.transforms import FeatureTransform

__all__ = [
    "SOURCES",
    "FeatureTransform",
    "RankingDataset",
    "Splits",
    "load",
    "read_log",
    "read_splits",
    "shared_dir",
    "synthetic",
    "tokenized",
]
