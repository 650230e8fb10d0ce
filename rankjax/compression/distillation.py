"""Distillation: a frozen teacher ranker teaches a smaller student.

The teacher is a finished rankjax run named by `config.distill.teacher` (its workdir); its
best parameters are loaded, never trained and never checkpointed with the student. Its
scores on the training items are computed once, before training, and travel with the
batches as the per-item extra `teacher` (a fixed set of training items needs no teacher
pass per step). The student's loss is

    loss = label_loss(scores, labels) + weight * distill_loss(scores, teacher)

with one of the ranking distillation losses below, in rax's signature
`(scores, teacher_scores, *, where) -> scalar`, averaged over lists:

* `listwise_kl`: KL(softmax(teacher / T) || softmax(student / T)) * T^2 per list
  (Hinton et al., 2015, over a query's products; RankDistil-style listwise transfer);
* `margin_mse`: mean over item pairs of ((s_i - s_j) - (t_i - t_j))^2 (Hofstätter et
  al., 2020): the student learns the teacher's margins, not its scale;
* `mse`: mean of (s - t)^2 over items (pointwise score matching).

`distill.init_from_teacher` starts the student from the teacher's weights: every
parameter whose path and shape match, with student layer `j` taken from teacher layer
`distill.init_layers[j]` (a shallower student of chosen teacher layers). A narrower
student cannot take the teacher's tables as they are; `distill.init_embeddings="pca"`
starts its embedding tables from the teacher's projected onto the top principal
directions of the teacher's word embeddings (one projection for word, position and
token-type tables, so their sum projects consistently), the rest fresh.
`distill.init_from` names another finished run to start from instead (e.g. a large MPNet
teacher's targets for a student started from the fine-tuned MiniLM's layers).

A teacher that reads other tokens than the student (another checkpoint's tokenizer, or
another `max_length`) scores the training pairs from their texts tokenized its own way
(`rankjax.tasks.ranking`), so an MPNet cross-encoder can teach a MiniLM student.

`distill.catalog_pairs=K` gives the teacher unlabelled pairs too: every training query
gets one more list of K products of the training catalog, those most similar to it by
TF-IDF (`rankjax.data.catalog`); the teacher scores them, and their items' `labelled`
extra (0) keeps them out of the label loss:

    loss = label_loss(scores, labels, where=where & labelled) + weight * distill_loss(...)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rankjax.data import catalog
from rankjax.data.batches import pad_batch_count, pad_lists
from rankjax.data.dataset import RankingDataset

DistillLossFn = Callable[..., jax.Array]
KEYS = {
    "teacher",
    "loss",
    "weight",
    "temperature",
    "init_from_teacher",
    "init_from",
    "init_layers",
    "init_embeddings",
    "catalog_pairs",
}
EMBEDDING_INITS = ("", "pca")


def _list_mean(per_list: jax.Array, where: jax.Array) -> jax.Array:
    """Mean over lists with at least one valid item."""
    has = jnp.any(where, axis=-1)
    return jnp.sum(jnp.where(has, per_list, 0.0)) / jnp.maximum(jnp.sum(has), 1)


def listwise_kl_loss(
    scores: jax.Array, teacher: jax.Array, *, where: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """KL divergence from the teacher's to the student's softmax over each list, times
    `temperature**2` (keeps gradient sizes comparable across temperatures).

    Args:
      scores: `[batch, list_size]` student scores.
      teacher: `[batch, list_size]` teacher scores.
      where: `[batch, list_size]` bool, False on padding.
      temperature: softens both distributions.
    """
    neg = jnp.finfo(jnp.float32).min
    s = jnp.where(where, scores.astype(jnp.float32) / temperature, neg)
    t = jnp.where(where, teacher.astype(jnp.float32) / temperature, neg)
    log_p = jax.nn.log_softmax(t, axis=-1)
    log_q = jax.nn.log_softmax(s, axis=-1)
    kl = jnp.sum(jnp.where(where, jnp.exp(log_p) * (log_p - log_q), 0.0), axis=-1)
    return _list_mean(kl, where) * temperature**2


def margin_mse_loss(
    scores: jax.Array, teacher: jax.Array, *, where: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """Mean over each list's ordered item pairs of the squared difference of margins."""
    del temperature
    pairs = where[..., :, None] & where[..., None, :]
    s = scores.astype(jnp.float32)
    t = teacher.astype(jnp.float32)
    diff = (s[..., :, None] - s[..., None, :]) - (t[..., :, None] - t[..., None, :])
    per_list = jnp.sum(jnp.where(pairs, diff**2, 0.0), axis=(-2, -1))
    count = jnp.sum(pairs, axis=(-2, -1)) - jnp.sum(where, axis=-1)  # minus the i == j pairs
    has_pair = count > 0
    value = per_list / jnp.maximum(count, 1)
    return _list_mean(jnp.where(has_pair, value, 0.0), where & has_pair[..., None])


def score_mse_loss(
    scores: jax.Array, teacher: jax.Array, *, where: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """Mean over lists of the mean squared score difference over their items."""
    del temperature
    err = jnp.where(where, (scores.astype(jnp.float32) - teacher.astype(jnp.float32)) ** 2, 0.0)
    return _list_mean(jnp.sum(err, axis=-1) / jnp.maximum(jnp.sum(where, axis=-1), 1), where)


LOSSES: dict[str, DistillLossFn] = {
    "listwise_kl": listwise_kl_loss,
    "margin_mse": margin_mse_loss,
    "mse": score_mse_loss,
}


@dataclasses.dataclass(frozen=True)
class Distiller:
    """The `distill` config section, checked.

    Attributes:
      teacher: workdir of the finished teacher run.
      loss: one of `LOSSES`.
      weight: weight of the distillation loss added to the label loss.
      temperature: for `listwise_kl`.
      init_from_teacher: start the student from the teacher's matching parameters.
      init_from: with `init_from_teacher`, the workdir of another finished run whose
        parameters start the student in the teacher's place ("": the teacher's).
      init_layers: teacher layers that initialise student layers 0, 1, ... (default:
        the first ones).
      init_embeddings: "pca": a narrower student's embedding tables start from the
        teacher's, projected onto their principal directions (needs `init_from_teacher`).
      catalog_pairs: products of an unlabelled list added per training query (0: none;
        module docstring).
    """

    teacher: str
    loss: str = "listwise_kl"
    weight: float = 1.0
    temperature: float = 1.0
    init_from_teacher: bool = False
    init_from: str = ""
    init_layers: tuple[int, ...] = ()
    init_embeddings: str = ""
    catalog_pairs: int = 0

    def __post_init__(self):
        if self.init_embeddings not in EMBEDDING_INITS:
            raise ValueError(
                f"distill.init_embeddings={self.init_embeddings!r}; valid: {list(EMBEDDING_INITS)}"
            )
        if self.init_embeddings and not self.init_from_teacher:
            raise ValueError("distill.init_embeddings needs distill.init_from_teacher=True")
        if self.init_from and not self.init_from_teacher:
            raise ValueError("distill.init_from needs distill.init_from_teacher=True")
        if self.loss not in LOSSES:
            raise ValueError(f"distill.loss={self.loss!r}; valid: {list(LOSSES)}")
        if self.weight < 0 or self.temperature <= 0:
            raise ValueError(
                f"distill.weight={self.weight} must be >= 0 and distill.temperature="
                f"{self.temperature} > 0"
            )
        if not self.teacher:
            raise ValueError("distill.teacher must name the teacher run's workdir")
        if self.catalog_pairs < 0:
            raise ValueError(f"distill.catalog_pairs={self.catalog_pairs} must be >= 0")

    def objective(self, label_loss: Callable) -> Callable[[jax.Array, Mapping], jax.Array]:
        """`(scores, batch) -> loss`: the label loss plus the weighted distillation loss
        against `batch["teacher"]`; items whose `labelled` extra is 0 (catalog pairs)
        take only the latter."""
        distill = LOSSES[self.loss]

        def loss(scores, batch):
            where = batch["where"]
            marks = batch.get(catalog.LABELLED)
            labelled = where if marks is None else where & (marks > 0)
            value = label_loss(scores, batch["labels"], where=labelled)
            kd = distill(scores, batch["teacher"], where=where, temperature=self.temperature)
            return value + self.weight * kd

        return loss


def from_config(cfg: Mapping[str, Any] | None) -> Distiller | None:
    """The `Distiller` of `config.distill`, or None without that section."""
    if not cfg:
        return None
    unknown = sorted(set(cfg) - KEYS)
    if unknown:
        raise ValueError(f"unknown config key distill.{unknown[0]}; valid: {sorted(KEYS)}")
    kwargs = dict(cfg)
    if "init_layers" in kwargs:
        kwargs["init_layers"] = tuple(int(i) for i in kwargs["init_layers"])
    return Distiller(**kwargs)


def label_objective(label_loss: Callable) -> Callable[[jax.Array, Mapping], jax.Array]:
    """`(scores, batch) -> loss` of the label loss alone (no teacher)."""
    return lambda scores, batch: label_loss(scores, batch["labels"], where=batch["where"])


def score_items(
    score_fn: Callable[[dict[str, np.ndarray]], jax.Array],
    dataset: RankingDataset,
    *,
    batch_size: int,
    list_size: int,
    prepare: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] = lambda b: b,
) -> np.ndarray:
    """Scores every item of `dataset` in list batches: `[num_items]` float32, item order.

    Args:
      score_fn: `batch -> [batch, list_size]` scores.
      dataset: the lists.
      batch_size: lists per call (the last call is padded with empty lists).
      list_size: at least the longest list (no item is dropped).
      prepare: applied to each host batch first (e.g. trimming token axes).
    """
    longest = int(dataset.list_sizes.max(initial=0))
    if longest > list_size:
        raise ValueError(f"list_size={list_size} is shorter than the longest list ({longest})")
    out = np.zeros(dataset.num_items, np.float32)
    for start in range(0, dataset.num_lists, batch_size):
        chunk = np.arange(start, min(start + batch_size, dataset.num_lists))
        part = dataset.select(chunk)
        batch = pad_lists(part, list_size)
        scores = np.asarray(score_fn(prepare(pad_batch_count(batch, batch_size))))
        first = dataset.list_offsets[start]
        out[first : first + part.num_items] = scores[: len(chunk)][batch["where"]]
    return out


def with_teacher_scores(dataset: RankingDataset, scores: np.ndarray) -> RankingDataset:
    """`dataset` with the per-item extra `teacher`."""
    return dataclasses.replace(dataset, extras={**dataset.extras, "teacher": scores})


def pca_projection(table: jax.Array, width: int) -> jax.Array:
    """The top `width` principal directions of an embedding table's rows (traceable: the
    student is initialised inside `jit`).

    Args:
      table: `[rows, hidden]`.
      width: the narrower width, at most `hidden`.

    Returns:
      `[hidden, width]` float32 orthonormal columns, by decreasing variance.
    """
    if not 0 < width <= table.shape[1]:
        raise ValueError(f"projection width {width} must be in [1, {table.shape[1]}]")
    table = jnp.asarray(table, jnp.float32)
    _, _, vt = jnp.linalg.svd(table - table.mean(0), full_matrices=False)
    return vt[:width].T


def _word_table(params: Mapping[str, Any]) -> jax.Array | None:
    """The first `word_embeddings/embedding` table found in `params`."""
    for key, value in params.items():
        if key == "word_embeddings" and isinstance(value, Mapping) and "embedding" in value:
            return value["embedding"]
        if isinstance(value, Mapping):
            found = _word_table(value)
            if found is not None:
                return found
    return None


def init_from_teacher(
    student: Mapping[str, Any],
    teacher: Mapping[str, Any],
    layers: tuple[int, ...],
    embeddings: str = "",
) -> tuple[dict[str, Any], list[str]]:
    """Copies teacher parameters into a fresh student tree wherever path and shape match.

    Args:
      student: the student's initial params.
      teacher: the teacher's trained params.
      layers: for every encoder (a subtree with `layer_<i>` children), the teacher
        layers that become student layers 0, 1, ...; empty: the same indices.
      embeddings: "pca": embedding tables (`*_embeddings/embedding`) whose width differs
        are copied projected onto the teacher word table's principal directions.

    Returns:
      `(params, the copied paths)`.
    """
    copied: list[str] = []
    projections: dict[int, np.ndarray] = {}

    def project(t, s, path):
        """`t @ P` for a narrower student's embedding table, else None."""
        if embeddings != "pca" or not path.endswith("_embeddings/embedding"):
            return None
        if np.ndim(t) != 2 or np.shape(t)[0] != np.shape(s)[0]:
            return None
        width = np.shape(s)[1]
        if width >= np.shape(t)[1]:
            return None
        if width not in projections:
            words = _word_table(teacher)
            if words is None:
                raise ValueError("distill.init_embeddings='pca': the teacher has no word table")
            projections[width] = pca_projection(words, width)
        return jnp.asarray(t, jnp.float32) @ projections[width]

    def walk(s, t, path):
        if not isinstance(s, Mapping):
            if t is not None and np.shape(t) == np.shape(s):
                copied.append(path)
                return jnp.asarray(t, jnp.asarray(s).dtype)
            projected = None if t is None else project(t, s, path)
            if projected is not None:
                copied.append(f"{path} (pca)")
                return jnp.asarray(projected, jnp.asarray(s).dtype)
            return s
        out = {}
        for key, value in s.items():
            source = key
            if layers and key.startswith("layer_"):
                j = int(key.split("_")[1])
                source = f"layer_{layers[j]}" if j < len(layers) else None
            sub = t.get(source) if isinstance(t, Mapping) and source is not None else None
            out[key] = walk(value, sub, f"{path}/{key}" if path else key)
        return out

    params = walk(student, teacher, "")
    logging.info("student initialised from the loaded run: %d tensors copied", len(copied))
    return params, copied
