"""Write the recipe dataset of the LoRA example: examples/data/recipes.jsonl.

Each line is one conversation: the user asks for a dish for some number of people, the
assistant answers with a recipe in the format the `recipe` metric reads
(kubetrain_trainer/evaluation/recipe.py):

    Title: Chicken Soup
    Ingredients:
    - 2 cups chicken
    ...
    Instructions:
    1. Boil the water in a pot.
    ...

Ingredients, quantities and steps follow from the dish and the servings by fixed rules,
so a small model learns them in minutes and BLEU and ROUGE can rise. The output is a
pure function of ``--seed``; the committed file was made with the defaults:

    python examples/data/make_recipes.py
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAINS = ["chicken", "tofu", "beef", "salmon", "beans", "mushrooms"]
# style -> (its own ingredients as (amount per person, unit, name), its steps)
STYLES: dict[str, tuple[list[tuple[int, str, str]], list[str]]] = {
    "soup": (
        [(2, "cups", "water"), (1, "", "onion"), (1, "", "carrot")],
        [
            "Boil the water in a pot.",
            "Add the {main}, onion and carrot.",
            "Simmer for twenty minutes.",
            "Season with salt and serve hot.",
        ],
    ),
    "salad": (
        [(1, "cup", "lettuce"), (1, "", "tomato"), (1, "tbsp", "oil")],
        [
            "Wash the lettuce and tomato.",
            "Cook the {main} and let it cool.",
            "Mix everything with the oil.",
            "Season with salt and serve cold.",
        ],
    ),
    "stew": (
        [(1, "", "potato"), (1, "", "onion"), (1, "cup", "stock")],
        [
            "Brown the {main} in a pot.",
            "Add the potato, onion and stock.",
            "Cover and cook for one hour.",
            "Season with salt and serve hot.",
        ],
    ),
    "curry": (
        [(1, "cup", "rice"), (1, "tbsp", "curry paste"), (1, "cup", "coconut milk")],
        [
            "Cook the rice.",
            "Fry the curry paste in a pan.",
            "Add the {main} and the coconut milk.",
            "Simmer and serve over the rice.",
        ],
    ),
    "pasta": (
        [(1, "cup", "pasta"), (1, "", "garlic clove"), (1, "tbsp", "butter")],
        [
            "Boil the pasta in salted water.",
            "Fry the {main} and garlic in the butter.",
            "Mix in the pasta.",
            "Season with pepper and serve.",
        ],
    ),
    "stir fry": (
        [(1, "", "pepper"), (1, "tbsp", "soy sauce"), (1, "cup", "noodles")],
        [
            "Heat a wok.",
            "Fry the {main} and the pepper.",
            "Add the noodles and soy sauce.",
            "Toss and serve hot.",
        ],
    ),
}
NUMBERS = ["one", "two", "three", "four", "five", "six"]
SYSTEM = "You are a cook. Answer with a recipe: a title, ingredients and numbered steps."


def amount(per_person: int, unit: str, name: str, people: int) -> str:
    quantity = per_person * people
    unit = f"{unit}s" if unit == "cup" and quantity > 1 else unit
    return " ".join(part for part in (str(quantity), unit, name) if part)


def recipe(
    main: str,
    style: str,
    people: int,
    styles: dict[str, tuple[list[tuple[int, str, str]], list[str]]] = STYLES,
) -> str:
    """The assistant's answer; `styles` other than STYLES: examples/make_base_model.py's
    cookbook of other dishes, which the LoRA example's base is pretrained on."""
    extras, steps = styles[style]
    lines = [f"Title: {main.title()} {style.title()}", "Ingredients:"]
    lines.append(f"- {amount(1, 'cup', main, people)}")
    lines += [f"- {amount(a, u, n, people)}" for a, u, n in extras]
    lines.append("Instructions:")
    lines += [f"{i}. {step.format(main=main)}" for i, step in enumerate(steps, 1)]
    return "\n".join(lines)


def records(seed: int) -> list[dict[str, list[dict[str, str]]]]:
    rng = random.Random(seed)
    dishes = [
        (main, style, people)
        for main in MAINS
        for style in STYLES
        for people in range(1, len(NUMBERS) + 1)
    ]
    rng.shuffle(dishes)
    out = []
    for main, style, people in dishes:
        ask = f"Write a recipe for {main} {style} for {NUMBERS[people - 1]}."
        messages = [{"role": "user", "content": ask},
                    {"role": "assistant", "content": recipe(main, style, people)}]  # fmt: skip
        if rng.random() < 0.2:
            messages.insert(0, {"role": "system", "content": SYSTEM})
        out.append({"messages": messages})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "recipes.jsonl")
    args = parser.parse_args()
    lines = [json.dumps(r) for r in records(args.seed)]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} recipes to {args.out}")


if __name__ == "__main__":
    main()
