"""The pruning engine: schedules of score/select stages applied by real token removal or masking."""
from .engine import PruneRecord, PruningEngine, StageRecord
from .schedule import Schedule, Stage
from .scorers import FixedScorer, RandomScorer, ScoreInputs, Scorer, TextAttentionScorer, VisionAttentionScorer
from .selectors import Selector, TopK

__all__ = ["FixedScorer", "PruneRecord", "PruningEngine", "RandomScorer", "Schedule", "ScoreInputs", "Scorer",
           "Selector", "Stage", "StageRecord", "TextAttentionScorer", "TopK", "VisionAttentionScorer"]
