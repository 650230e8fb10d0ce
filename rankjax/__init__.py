"""rankjax: compressed rankers for search and recommendation, in JAX.

Stable API:
  rankjax.metrics.evaluate(scores, labels, *, where=None, metrics=..., no_relevant="zero")
  rankjax.train_and_evaluate(config, workdir)   ranking, or retrieval when config.task says so
  rankjax.serving.load(workdir).score(...) / .score_texts(query, products)
  rankjax.text.embed(texts, checkpoint_dir=None, pooling="mean", normalize=True)
  rankjax.data.load(config.data), rankjax.data.synthetic.make_world(...)
  rankjax.models.get(config.model), rankjax.losses.get(name, ...)
"""

from rankjax import data, losses, metrics, models
from rankjax.metrics import evaluate

__version__ = "0.1.0"


def train_and_evaluate(config, workdir):
    """`rankjax.trainer.train_and_evaluate`, or `rankjax.retrieval_trainer`'s for a config
    with `task="retrieval"` (imported lazily: they pull in orbax)."""
    if config.get("task", "ranking") == "retrieval":
        from rankjax import retrieval_trainer

        return retrieval_trainer.train_and_evaluate(config, workdir)
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
