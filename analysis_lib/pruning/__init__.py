"""The pruning engine: schedules of score/select stages applied by real token removal or masking."""
from .engine import PruneRecord, PruningEngine, StageRecord
from .methods import METHODS, Method, get_method
from .nominal import nominal_kept
from .schedule import Schedule, Stage
from .scorers import (ConstantScorer, DensityPeakScorer, FixedScorer, FoPruSignificance, RandomScorer, ScoreInputs,
                      Scorer, TextAttentionScorer, VisionAttentionScorer)
from .selectors import Grid, ImportantDiverse, Quartile, Region, Rows, SampleSelection, Selector, TopK, Union

__all__ = ["METHODS", "ConstantScorer", "DensityPeakScorer", "FixedScorer", "FoPruSignificance", "Grid",
           "ImportantDiverse", "Method", "PruneRecord", "PruningEngine", "Quartile", "RandomScorer", "Region", "Rows",
           "SampleSelection", "Schedule", "ScoreInputs", "Scorer", "Selector", "Stage", "StageRecord",
           "TextAttentionScorer", "TopK", "Union", "VisionAttentionScorer", "get_method", "nominal_kept"]
