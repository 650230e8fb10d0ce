"""rankjax: compressed rankers for search and recommendation, in JAX.

Stable API:
  rankjax.metrics.evaluate(scores, labels, *, where=None, metrics=..., no_relevant="zero",
                           per_query=False)   padded arrays or ragged lists
  rankjax.metrics.paired_test(a, b, method="t" | "bootstrap")   per-query significance
  rankjax.metrics.write_trec_run(path, scores) / write_trec_qrels(path, labels)
  rankjax.config_args.load("synthetic_listwise:runlocal")   a shipped config, or a path
  rankjax.train_and_evaluate(config, workdir)   any task: config.task, default "ranking"
  rankjax.serving.load(workdir).score(...) / .score_texts(query, products)
  rankjax.text.embed(texts, checkpoint_dir=None, pooling="mean", normalize=True)
  rankjax.data.load(config.data), rankjax.data.synthetic.make_world(...)
  rankjax.models.get(config.model), rankjax.losses.get(name, ...)
  rankjax.incremental.IncrementalScorer(model, variables)   per-event next-item serving
  rankjax.export.save(ranker, path) / rankjax.export.load(path)
"""

from rankjax import config_args, data, losses, metrics, models
from rankjax.metrics import evaluate

__version__ = "0.1.0"


# Reachable as attributes after `import rankjax`, imported on first use (they pull in
# orbax, tokenizers or AQT, which `import rankjax` alone should not pay for).
_LAZY = ("serving", "text", "export", "incremental", "compression", "trainer", "provenance")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"rankjax.{name}")
    raise AttributeError(f"module 'rankjax' has no attribute {name!r}")


def train_and_evaluate(config, workdir):
    """`rankjax.trainer.train_and_evaluate` (imported lazily: it pulls in orbax)."""
    from rankjax import trainer

    return trainer.train_and_evaluate(config, workdir)


__all__ = [
    *_LAZY,
    "config_args",
    "data",
    "evaluate",
    "losses",
    "metrics",
    "models",
    "train_and_evaluate",
]
