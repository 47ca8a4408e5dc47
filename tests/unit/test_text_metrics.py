"""Metrics of generated text: hand-computed cases, agreement with sacrebleu and rouge-score,
edge cases of the simple metrics, the recipe scores on good and bad text, and the registry."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import pytest
import sacrebleu
from rouge_score import rouge_scorer  # type: ignore[import-untyped]

from kubetrain_core import registry
from kubetrain_trainer.evaluation import (
    Bleu,
    ExactMatch,
    RecipeMetric,
    Rouge,
    TextMetric,
    TokenAccuracy,
)
from kubetrain_trainer.evaluation.recipe import parse_recipe

METRIC_KEYS = {
    "bleu": {"bleu"},
    "rouge": {"rouge1", "rouge2", "rougeL"},
    "accuracy": {"accuracy"},
    "exact_match": {"exact_match"},
    "recipe": {
        "recipe_ingredient_coherence",
        "recipe_instruction_quality",
        "recipe_completeness",
        "recipe_format",
    },
}


def _score(
    metric: TextMetric, predictions: Sequence[str], references: Sequence[str]
) -> dict[str, float]:
    return metric.compute(predictions, references, [""] * len(predictions))


# --- the registry and the contract -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRIC_KEYS))
def test_the_registry_builds_every_metric_and_its_keys(name: str) -> None:
    cls = registry.METRICS.get(name)
    assert isinstance(cls, type) and issubclass(cls, TextMetric)
    scores = _score(cls(), ["a b c d e"], ["a b c d e"])
    assert set(scores) == METRIC_KEYS[name]
    assert all(isinstance(value, float) for value in scores.values())


def test_the_registry_lists_the_builtins_and_takes_plugins_as_metric_entry_points() -> None:
    assert set(METRIC_KEYS) <= set(registry.METRICS.names())
    assert registry.METRICS.key == "metric"  # entry points "metric.<name>"
    with pytest.raises(registry.UnknownComponentError, match="unknown metric 'meteor'"):
        registry.METRICS.get("meteor")


@pytest.mark.parametrize("name", sorted(METRIC_KEYS))
def test_mismatched_or_empty_input_is_refused(name: str) -> None:
    metric = registry.METRICS.get(name)()
    with pytest.raises(ValueError, match=r"differ in length: 2, 1, 2"):
        metric.compute(["a", "b"], ["a"], ["p", "q"])
    with pytest.raises(ValueError, match=r"differ in length: 1, 1, 0"):
        metric.compute(["a"], ["a"], [])
    with pytest.raises(ValueError, match="no predictions to score"):
        metric.compute([], [], [])
    # A bare string is a Sequence[str] of its characters: refused, not scored.
    with pytest.raises(TypeError, match="predictions must be a sequence of strings"):
        metric.compute("abc", ["a", "b", "c"], ["", "", ""])


def test_importing_the_metrics_loads_neither_scoring_library() -> None:
    probe = "import sys, kubetrain_trainer.evaluation; print(sorted({m.split('.')[0] for m in sys.modules} & {'sacrebleu', 'rouge_score', 'torch'}))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# --- BLEU ---------------------------------------------------------------------------------

CAT = "the cat sat on the mat"
CAT_REF = "the cat sat on a mat"


def test_bleu_by_hand() -> None:
    # 6 tokens each, so no brevity penalty. Clipped n-gram precisions of CAT against CAT_REF:
    # 1-grams 5/6 ("the" twice, once in the reference), 2-grams 3/5 (the cat, cat sat, sat on),
    # 3-grams 2/4 (the cat sat, cat sat on), 4-grams 1/3 (the cat sat on).
    # BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25 = 53.728...
    bleu = _score(Bleu(), [CAT], [CAT_REF])["bleu"]
    assert bleu == pytest.approx(100 * (1 / 12) ** 0.25)
    assert _score(Bleu(), [CAT_REF], [CAT_REF])["bleu"] == pytest.approx(100.0)


def test_bleu_is_sacrebleu_corpus_bleu() -> None:
    predictions = [CAT, "hello there general", "a completely different sentence here", "yes"]
    references = [CAT_REF, "hello there general kenobi", "nothing in common at all", "yes"]
    expected = sacrebleu.corpus_bleu(predictions, [references]).score
    assert _score(Bleu(), predictions, references)["bleu"] == pytest.approx(expected, rel=1e-12)
    # Corpus BLEU pools the n-gram counts: it is not the mean of per-sentence scores.
    per_sentence = [
        sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(predictions, references, strict=True)
    ]
    assert expected != pytest.approx(sum(per_sentence) / len(per_sentence))


# --- ROUGE --------------------------------------------------------------------------------


def test_rouge_by_hand() -> None:
    # CAT vs CAT_REF, 6 tokens each: 5 shared unigrams ("the" clipped to 1) -> P = R = F = 5/6;
    # 3 shared bigrams of 5 -> F = 3/5; LCS "the cat sat on mat" = 5 -> F = 5/6.
    # "hello world" vs "goodbye" shares nothing -> 0 for all three. Mean of the two records:
    scores = _score(Rouge(), [CAT, "hello world"], [CAT_REF, "goodbye"])
    assert scores == pytest.approx({"rouge1": 5 / 12, "rouge2": 3 / 10, "rougeL": 5 / 12})


def test_rouge_is_the_mean_of_rouge_score_f_measures_with_stemming() -> None:
    predictions = ["the cats were running quickly", CAT, "Pancakes: whisk 2 eggs!"]
    references = ["a cat runs quickly", CAT_REF, "whisk the eggs, then fry"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    per_record = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
    expected = {
        k: sum(s[k].fmeasure for s in per_record) / 3 for k in ("rouge1", "rouge2", "rougeL")
    }
    scores = _score(Rouge(), predictions, references)
    assert scores == pytest.approx(expected, rel=1e-12)
    # Stemming matters here (cats/cat, running/runs): without it ROUGE-1 is lower.
    unstemmed = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    plain = (
        sum(
            unstemmed.score(r, p)["rouge1"].fmeasure
            for p, r in zip(predictions, references, strict=True)
        )
        / 3
    )
    assert scores["rouge1"] > plain + 0.01


# --- exact match --------------------------------------------------------------------------


def test_exact_match_ignores_surrounding_and_repeated_whitespace_only() -> None:
    predictions = ["  Paris \n", "New\t\tYork  City", "paris", "Paris.", "Rome"]
    references = ["Paris", "New York City", "Paris", "Paris", "Rome "]
    # Equal after whitespace normalisation: records 1, 2 and 5; case (3) and punctuation (4)
    # still count -> 3 / 5.
    assert _score(ExactMatch(), predictions, references) == {"exact_match": 3 / 5}


def test_exact_match_of_empty_texts() -> None:
    assert _score(ExactMatch(), ["  ", "x"], ["", ""]) == {"exact_match": 1 / 2}


# --- token accuracy -----------------------------------------------------------------------


def test_token_accuracy_by_hand() -> None:
    predictions = [
        "a b x d",  # 3 of 4 in place
        "a b",  # 2 of 4: the missing "c d" count as wrong
        "a b c d e f",  # 4 of 4: the extra "e f" are not counted
        "b c d",  # 0 of 4: shifted by one, every position differs
    ]
    references = ["a b c d"] * 4
    # (3 + 2 + 4 + 0) / (4 * 4) = 9 / 16
    assert _score(TokenAccuracy(), predictions, references) == {"accuracy": 9 / 16}


def test_token_accuracy_weighs_records_by_reference_length_and_splits_on_any_whitespace() -> None:
    # Record 1: 1 of 1; record 2: "x\ty\nz" tokens x y z against x y w -> 2 of 3.
    # Corpus: (1 + 2) / (1 + 3) = 3/4, not the mean of 1 and 2/3.
    scores = _score(TokenAccuracy(), ["  yes ", "x\ty\nz"], ["yes", "x y  w"])
    assert scores == {"accuracy": 3 / 4}


def test_token_accuracy_is_zero_when_no_reference_has_a_token() -> None:
    assert _score(TokenAccuracy(), ["anything", ""], ["", "   "]) == {"accuracy": 0.0}
    assert _score(TokenAccuracy(), ["Yes"], ["yes"]) == {"accuracy": 0.0}  # case-sensitive


# --- recipe -------------------------------------------------------------------------------

PERFECT = """Title: Pancakes
Ingredients:
- 2 cups flour
- 2 eggs
Instructions:
1. Whisk the flour and eggs.
2. Fry the batter in a hot pan.
"""

FLAWED = """Title: Pancakes

Ingredients:
- 2 cups flour
- 2 eggs
- 1 pinch salt
Instructions:
1. Whisk the flour and egg.
2. Fry in a pan.
3. Serve.
Enjoy!
"""

MARKDOWN = """# Pancakes
## Ingredients
* flour
## Instructions
Mix everything and bake.
"""

HALF = """Title:
Ingredients: flour, eggs
Instructions:
- Mix the flour
1. Bake it
"""


def test_the_documented_example_scores_full_marks() -> None:
    assert RecipeMetric.score(PERFECT) == {
        "recipe_ingredient_coherence": 1.0,
        "recipe_instruction_quality": 1.0,
        "recipe_completeness": 1.0,
        "recipe_format": 1.0,
    }


def test_a_well_formed_recipe_with_flaws_by_hand() -> None:
    recipe = parse_recipe(FLAWED)
    assert (recipe.title, recipe.ingredients) == (
        "Pancakes",
        ["2 cups flour", "2 eggs", "1 pinch salt"],
    )
    assert recipe.steps == ["Whisk the flour and egg.", "Fry in a pan.", "Serve."]
    assert RecipeMetric.score(FLAWED) == pytest.approx(
        {
            # flour: "flour" in step 1; eggs: "egg" in step 1 (plural-insensitive); salt: in no
            # step ("pinch" is a quantity word) -> 2/3.
            "recipe_ingredient_coherence": 2 / 3,
            # "Whisk the flour and egg." 5 tokens, whisk; "Fry in a pan." 4 tokens, fry;
            # "Serve." has 1 token < 3 -> 2/3.
            "recipe_instruction_quality": 2 / 3,
            # title, ingredients and steps all present -> 3/3.
            "recipe_completeness": 1.0,
            # 10 non-blank lines (the blank one is ignored); "Enjoy!" is outside the layout
            # -> 9/10.
            "recipe_format": 9 / 10,
        }
    )


def test_a_malformed_recipe_by_hand() -> None:
    # Markdown headers and "*" bullets are not the layout: nothing is found, every line
    # is outside it.
    assert RecipeMetric.score(MARKDOWN) == dict.fromkeys(METRIC_KEYS["recipe"], 0.0)
    # An empty title, an inline "Ingredients: ..." (not a header, so no ingredient section),
    # a "- " item among the steps (not a step), and one short step.
    assert RecipeMetric.score(HALF) == pytest.approx(
        {
            "recipe_ingredient_coherence": 0.0,  # no ingredient
            "recipe_instruction_quality": 0.0,  # "Bake it": 2 tokens < 3 -> 0/1
            "recipe_completeness": 1 / 3,  # only the steps
            "recipe_format": 3 / 5,  # "Title:", "Instructions:", "1. Bake it" of 5 lines
        }
    )


def test_plural_insensitive_mentions_and_windows_line_endings() -> None:
    text = "Title: Salsa\r\nIngredients:\r\n- 3 tomatoes\r\n- 1 onion, diced\r\nInstructions:\r\n1. Chop the tomato and onions finely.\r\n"
    assert RecipeMetric.score(text) == dict.fromkeys(METRIC_KEYS["recipe"], 1.0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\n",
        "-",
        "1.",
        "Title",
        "Ingredients:\n-\n- \n- 2 cups\n",
        "Instructions:\n1. \n2.x",
        "\x00\t🍅 日本語",
        "Title: " + "x" * 10_000,
    ],
)
def test_any_text_scores_in_range_without_raising(text: str) -> None:
    scores = RecipeMetric.score(text)
    assert set(scores) == METRIC_KEYS["recipe"]
    assert all(0.0 <= value <= 1.0 for value in scores.values())


def test_ingredients_without_a_name_word_are_never_mentioned() -> None:
    text = "Ingredients:\n- 2 cups\nInstructions:\n1. Add 2 cups of water."
    assert RecipeMetric.score(text)["recipe_ingredient_coherence"] == 0.0


def test_the_recipe_metric_averages_records_and_ignores_references() -> None:
    scores = RecipeMetric().compute([FLAWED, ""], ["unrelated", PERFECT], ["p", "q"])
    assert scores == pytest.approx(
        {
            "recipe_ingredient_coherence": (2 / 3 + 0) / 2,
            "recipe_instruction_quality": (2 / 3 + 0) / 2,
            "recipe_completeness": (1 + 0) / 2,
            "recipe_format": (9 / 10 + 0) / 2,
        }
    )
