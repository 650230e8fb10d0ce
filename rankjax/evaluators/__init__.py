"""Evaluators: run a scoring function over a split and aggregate metrics exactly."""

from rankjax.evaluators.ranking import RankingEvaluator

__all__ = ["RankingEvaluator"]
