"""Load a trained ranker from its workdir and score lists of raw features with it.

    ranker = rankjax.serving.load("/tmp/rankjax/quickstart")
    scores = ranker.score(features, where)  # [batch, list_size, F] -> [batch, list_size]

The ranker applies the feature transform fitted at training time (`feature_transform.json`),
so it takes features as the data files hold them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from rankjax import compiler, models
from rankjax.checkpoint import quiet_orbax_logs, restore_here
from rankjax.compression import forms, quantization, serve, sparsity
from rankjax.data import packing
from rankjax.data.batches import pad_lists
from rankjax.data.dataset import from_groups
from rankjax.data.pipeline import tokenized
from rankjax.data.transforms import FeatureTransform


def cast_params(variables: dict[str, Any], dtype: Any = "bfloat16") -> dict[str, Any]:
    """`variables` with the float32 leaves of `params` cast to `dtype` once, as a PyTorch
    user serves (`model.to(torch.bfloat16)`), instead of in every call (on an H200 the
    per-call casts cost a bf16 cross-encoder 10% of its time; docs/performance.md). Integer
    and fp8 weights and their float32 scales (other collections) are left as they are."""
    dtype = jax.numpy.dtype(dtype)

    def cast(a):
        return a.astype(dtype) if a.dtype == np.float32 else a

    return {**variables, "params": jax.tree_util.tree_map(cast, variables["params"])}


def checked_features(features: np.ndarray, where: np.ndarray, impute: bool) -> np.ndarray:
    """Raw `features [b, n, F]` with padding items zeroed (whatever they hold never
    matters); NaN on a valid item is refused unless the run imputes missing values.

    Raises:
      ValueError: naming the first NaN's `[list, item, feature]`.
    """
    where = np.asarray(where, bool)
    features = np.where(where[..., None], features, 0.0).astype(np.float32)
    if not impute:
        bad = np.argwhere(np.isnan(features))
        if len(bad):
            i, j, k = (int(v) for v in bad[0])
            raise ValueError(
                f"features[{i}, {j}, {k}] is NaN and the run does not impute missing values "
                "(data.missing='impute' imputes them at training)"
            )
    return features


@dataclasses.dataclass
class Ranker:
    """A model, its parameters and its feature transform."""

    model: nn.Module
    variables: Any  # {"params": ...} and, for a served quantized model, its integer weights
    transform: FeatureTransform
    config: ml_collections.ConfigDict | None  # None: no run behind it (benchmarks)

    def __post_init__(self):
        # Weights go to the device once: host arrays (a served model as saved) would be
        # copied to it again on every call, which a served model's timing would include.
        self.variables = jax.device_put(self.variables)
        # Text batches as the run computed them: trimmed, or packed (pack_length).
        data = (self.config or {}).get("data") or {}
        self.prepare = packing.preparer(data.get("text"), hasattr(self.model, "packed_inputs"))
        self._apply = compiler.jit(
            lambda variables, x, where: self.model.apply(variables, x, where, train=False)
        )

    def score(self, features: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """Scores `features [batch, list_size, num_features]` (raw) -> `[batch, list_size]`.

        Raises:
          ValueError: a valid item has a NaN feature and the run did not impute missing
            values (the exported artifact refuses the same inputs).
        """
        features = np.asarray(features, np.float32)
        b, n, f = features.shape
        if where is None:
            where = np.ones((b, n), bool)
        features = checked_features(features, where, self.transform.fill is not None)
        x = self.transform(features.reshape(b * n, f)).reshape(b, n, -1)
        return np.asarray(self._apply(self.variables, x, np.asarray(where, bool)))

    def score_batch(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Scores a padded batch holding the model's inputs (`models.input_keys`) and
        `where` -> `[batch, list_size]` (features must already be transformed). Token
        batches are trimmed, or packed when the run packed them (`data.text.pack_length`)."""
        if "tokens" in batch or "item_tokens" in batch:
            batch = self.prepare(batch)
        return np.asarray(
            self._apply(self.variables, models.inputs(self.model, batch), batch["where"])
        )

    def score_texts(self, query: str, products: Sequence[str]) -> np.ndarray:
        """Scores product texts for a query with a text ranker -> `[len(products)]`.

        Each product text is what the training data's `data.text.item_columns` joined
        by spaces would give (e.g. the product title).
        """
        text_cfg = self.config.data.get("text")
        if not text_cfg:
            raise ValueError("score_texts needs a text ranker (a run with data.text)")
        column = "text"
        one = from_groups(
            np.zeros((len(products), 0), np.float32),
            np.zeros(len(products), np.float32),
            [len(products)],
            query_ids=np.array([query], dtype=object),
            extras={f"text:{column}": np.asarray(list(products), dtype=object)},
        )
        one = tokenized(one, {**dict(text_cfg), "item_columns": (column,)})
        return self.score_batch(pad_lists(one, max(1, len(products))))[0]


def load(workdir: str, params: str = "best") -> Ranker:
    """Loads the ranker trained in `workdir`.

    Args:
      workdir: a finished (or interrupted) training run's folder.
      params: `"best"` (the best validation checkpoint), `"latest"` (the newest train
        state) or `"served"` (the converted model in `served/`: integer weights for
        quantized layers, N:M kernels unpacked from their packed form).

    Raises:
      FileNotFoundError: the workdir lacks the config, transform or checkpoint.
    """
    if params not in ("best", "latest", "served"):
        raise ValueError(f"params={params!r}; valid: 'best', 'latest', 'served'")
    quiet_orbax_logs()
    paths = {n: os.path.join(workdir, n) for n in ("config.json", "feature_transform.json")}
    for path in paths.values():
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file; is {workdir} a rankjax workdir?")
    with open(paths["config.json"]) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(paths["feature_transform.json"]) as f:
        transform = FeatureTransform.from_json(json.load(f))
    if params == "served":
        return _load_served(workdir, config, transform)
    folder = os.path.join(workdir, "best" if params == "best" else "checkpoints")
    manager = ocp.CheckpointManager(folder)
    step = manager.best_step() if params == "best" else manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{folder}: no checkpoint to load")
    manager.close()
    restored = restore_here(folder, step)
    weights = restored if params == "best" else restored["params"]
    return Ranker(models.get(config.model), {"params": weights}, transform, config)


def _load_served(workdir: str, config, transform: FeatureTransform) -> Ranker:
    quantizer = quantization.from_config(config.get("quant"))
    if quantizer is not None:  # rebuilt in the form it was converted to
        quantizer = forms.quantizer_for(quantizer, forms.recorded(workdir, quantizer))
    variables = serve.load(workdir, sparsity.from_config(config.get("sparsity")))
    make = functools.partial(models.get, config.model)
    model = quantization.build(make, quantizer, "serve")
    model, variables = serve.served_module(model, variables)
    return Ranker(model, variables, transform, config)
