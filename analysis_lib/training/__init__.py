"""Training the embedded default model (a small LLaVA) on the synthetic scene suite."""

from .evaluate import evaluate_checkpoint, evaluate_model, generate_answers
from .model import ModelShape, build_model, build_processor, load_pretrained, save_pretrained
from .recipe import RECIPES, Recipe, Stage
from .tokenizer import build_tokenizer
from .train import train

__all__ = [
    "evaluate_checkpoint", "evaluate_model", "generate_answers", "ModelShape", "build_model", "build_processor",
    "load_pretrained", "save_pretrained", "RECIPES", "Recipe", "Stage", "build_tokenizer", "train",
]
