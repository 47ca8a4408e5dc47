"""Scores of the text the model generates for validation records, chosen by name in
``evaluation.metrics`` (registry ``metric``); pure Python, no torch."""

from kubetrain_trainer.evaluation.metrics import (
    Bleu,
    ExactMatch,
    Rouge,
    TextMetric,
    TokenAccuracy,
    check_inputs,
)
from kubetrain_trainer.evaluation.recipe import RecipeMetric

__all__ = [
    "Bleu",
    "ExactMatch",
    "RecipeMetric",
    "Rouge",
    "TextMetric",
    "TokenAccuracy",
    "check_inputs",
]
