"""Evaluators: `Evaluator.run(score_fn) -> {metric: value}` over one split, built from an
entry of the `evals` config section (`evaluators.section`)."""

from rankjax.evaluators.ctr import CtrEvaluator
from rankjax.evaluators.ranking import RankingEvaluator
from rankjax.evaluators.retrieval import FullRanking, SampledRanking

__all__ = ["CtrEvaluator", "FullRanking", "RankingEvaluator", "SampledRanking"]
