"""rankjax: compressed rankers for search and recommendation, in JAX.

Stable API:
  rankjax.metrics.evaluate(scores, labels, *, where=None, metrics=..., no_relevant="zero")
  rankjax.train_and_evaluate(config, workdir)   any task: config.task, default "ranking"
  rankjax.serving.load(workdir).score(...) / .score_texts(query, products)
  rankjax.text.embed(texts, checkpoint_dir=None, pooling="mean", normalize=True)
  rankjax.data.load(config.data), rankjax.data.synthetic.make_world(...)
  rankjax.models.get(config.model), rankjax.losses.get(name, ...)
"""

from rankjax import data, losses, metrics, models
from rankjax.metrics import evaluate

__version__ = "0.1.0"


def train_and_evaluate(config, workdir):
    """`rankjax.trainer.train_and_evaluate` (imported lazily: it pulls in orbax)."""
    from rankjax import trainer

    return trainer.train_and_evaluate(config, workdir)


__all__ = [
    "data",
    "evaluate",
    "losses",
    "metrics",
    "models",
    "train_and_evaluate",
]
