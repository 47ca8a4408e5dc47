"""Recipe scores of generated text, and the worked example of a domain metric plugin.

A generated recipe is expected in this layout (headers case-insensitive, surrounding
whitespace and blank lines ignored)::

    Title: Pancakes
    Ingredients:
    - 2 cups flour
    - 2 eggs
    Instructions:
    1. Whisk the flour and eggs.
    2. Fry the batter in a hot pan.

``Title:`` carries the title on its own line; ``Ingredients:`` and ``Instructions:`` stand
alone and open their section; an ingredient is a ``- `` item under ``Ingredients:``, a step
a ``<number>. `` item under ``Instructions:``. The scores judge the predictions alone
(references and prompts are unused), each record's score in [0, 1] and their mean over
the records reported; any text is accepted, and a part that is absent scores 0.

Your own domain metric is written the same way: subclass ``TextMetric``, call
``check_inputs``, return names prefixed with your domain, and name the class in
``evaluation.metrics`` as ``package.module:Class``, or give it a short name from your
package's ``pyproject.toml``::

    [project.entry-points."kubetrain.plugins"]
    "metric.my_domain" = "my_team.metrics:MyDomainMetric"   # evaluation.metrics: [my_domain]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import fmean

from kubetrain_trainer.evaluation.metrics import TextMetric, check_inputs

_TITLE = re.compile(r"^title\s*:\s*(.*)$", re.IGNORECASE)
_SECTION = re.compile(r"^(ingredients|instructions)\s*:$", re.IGNORECASE)
_INGREDIENT = re.compile(r"^-\s+(\S.*)$")
_STEP = re.compile(r"^\d+\.\s+(\S.*)$")
_WORD = re.compile(r"[a-z]+")

# Words of an ingredient line that say how much, how it is cut, or join others: not what it
# is. (Both word lists read better as text than as ruff's preferred list literal: SIM905.)
QUANTITY_AND_FILLER_WORDS = frozenset(
    "cup cups tablespoon tablespoons tbsp teaspoon teaspoons tsp gram grams kilogram "  # noqa: SIM905
    "kilograms litre litres liter liters ounce ounces pound pounds lbs pinch dash clove "
    "cloves slice slices can cans piece pieces and the for with fresh large small medium "
    "chopped diced sliced minced taste optional".split()
)
# Imperative cooking verbs: a step that uses none of them does not say what to do.
ACTION_VERBS = frozenset(
    "add bake beat blend boil bring chop combine cook cool cover cut dice drain fold fry "  # noqa: SIM905
    "garnish grate grill heat knead let marinate mash melt mix peel place pour preheat "
    "reduce remove roast roll saute season serve simmer slice spread sprinkle stir strain "
    "toss transfer whisk".split()
)
MIN_STEP_WORDS = 3


@dataclass
class ParsedRecipe:
    """What :func:`parse_recipe` found in one text."""

    title: str = ""
    ingredients: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    lines: int = 0
    """Non-blank lines."""
    conforming_lines: int = 0
    """Non-blank lines that are a header, or an item of the section they are in."""


def parse_recipe(text: str) -> ParsedRecipe:
    """Read ``text`` in the layout of the module docstring; never raises."""
    recipe = ParsedRecipe()
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        recipe.lines += 1
        if title := _TITLE.match(line):
            recipe.title = recipe.title or title[1].strip()  # the first non-empty title counts
        elif header := _SECTION.match(line):
            section = header[1].lower()
        elif section == "ingredients" and (item := _INGREDIENT.match(line)):
            recipe.ingredients.append(item[1])
        elif section == "instructions" and (step := _STEP.match(line)):
            recipe.steps.append(step[1])
        else:
            continue  # prose, a misplaced item, a markdown header: not in the layout
        recipe.conforming_lines += 1
    return recipe


def _word_forms(word: str) -> set[str]:
    """The words equal to ``word`` plural-insensitively (egg/eggs, tomato/tomatoes)."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("s"):
        forms.add(word[:-1])
    if word.endswith("es"):
        forms.add(word[:-2])
    return forms


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


class RecipeMetric(TextMetric):
    """Four recipe scores in [0, 1], each the mean over records (registry ``recipe``).

    Words below are lowercase runs of letters ``[a-z]+``; "plural-insensitive" means equal,
    or one is the other plus "s" or "es".

    - ``recipe_ingredient_coherence``: of the ingredients, the fraction mentioned in the
      steps. An ingredient's name words are its words of at least 3 letters that are not in
      ``QUANTITY_AND_FILLER_WORDS``; it is mentioned when one of them matches a word of the
      steps, plural-insensitive: ``- 2 cups flour`` is mentioned by ``Sift the flour``,
      ``- 2 eggs`` by ``Beat the egg``, ``- 1 pinch salt`` by no step without "salt". 0 when
      there is no ingredient.
    - ``recipe_instruction_quality``: of the steps, the fraction with at least
      ``MIN_STEP_WORDS`` whitespace-separated tokens and a word in ``ACTION_VERBS`` (as
      written: "whisked" is not "whisk"). 0 when there is no step.
    - ``recipe_completeness``: (has a non-empty title + has at least one ingredient + has at
      least one step) / 3.
    - ``recipe_format``: of the non-blank lines, the fraction in the layout: a ``Title:``,
      ``Ingredients:`` or ``Instructions:`` header, an ingredient item under
      ``Ingredients:`` or a step item under ``Instructions:``. 0 for blank text. It judges
      only the lines present; ``recipe_completeness`` judges which parts are missing.
    """

    names = (
        "recipe_ingredient_coherence",
        "recipe_instruction_quality",
        "recipe_completeness",
        "recipe_format",
    )

    def compute(
        self, predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str]
    ) -> dict[str, float]:
        check_inputs(predictions, references, prompts)
        scores = [self.score(text) for text in predictions]
        return {name: fmean(s[name] for s in scores) for name in scores[0]}

    @staticmethod
    def score(text: str) -> dict[str, float]:
        """The four scores of one recipe."""
        recipe = parse_recipe(text)
        step_words = {word for step in recipe.steps for word in _WORD.findall(step.lower())}
        mentioned = 0
        for ingredient in recipe.ingredients:
            names = [w for w in _WORD.findall(ingredient.lower()) if len(w) >= 3]
            names = [w for w in names if w not in QUANTITY_AND_FILLER_WORDS]
            mentioned += any(_word_forms(w) & step_words for w in names)
        good_steps = sum(
            len(step.split()) >= MIN_STEP_WORDS
            and not ACTION_VERBS.isdisjoint(_WORD.findall(step.lower()))
            for step in recipe.steps
        )
        parts = bool(recipe.title) + bool(recipe.ingredients) + bool(recipe.steps)
        return {
            "recipe_ingredient_coherence": _fraction(mentioned, len(recipe.ingredients)),
            "recipe_instruction_quality": _fraction(good_steps, len(recipe.steps)),
            "recipe_completeness": parts / 3,
            "recipe_format": _fraction(recipe.conforming_lines, recipe.lines),
        }
