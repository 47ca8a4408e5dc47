"""Write examples/data/tiny_corpus.txt: short generated stories for the example jobs.

The stories come from a small grammar (a few hundred words, fixed sentence
shapes, pronouns that agree with the hero), so a 2-layer character model
learns spelling and phrase structure within a few hundred steps and the
validation loss falls visibly in about a minute on a laptop CPU. The output is
a pure function of ``--seed``; the committed file was made with the defaults:

    python examples/data/make_corpus.py
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

HEROES = [
    ("Lily", "she", "her"),
    ("Tom", "he", "his"),
    ("Mia", "she", "her"),
    ("Ben", "he", "his"),
    ("Sara", "she", "her"),
    ("Max", "he", "his"),
    ("Anna", "she", "her"),
    ("Sam", "he", "his"),
    ("Lucy", "she", "her"),
    ("Jack", "he", "his"),
]
FRIENDS = [
    "a little dog",
    "a small cat",
    "an old owl",
    "a happy frog",
    "a brown bear",
    "a red bird",
    "a shy fox",
    "a kind duck",
    "a big fish",
    "a tiny mouse",
]
PLACES = [
    "the park",
    "the forest",
    "the beach",
    "the garden",
    "the river",
    "the hill",
    "the farm",
    "the lake",
    "the town",
    "the meadow",
]
THINGS = [
    "a red ball",
    "a blue kite",
    "a shiny stone",
    "a yellow hat",
    "a green box",
    "a toy boat",
    "a big apple",
    "a soft blanket",
    "a white shell",
    "a small key",
]
FEELINGS = ["happy", "sad", "scared", "proud", "tired", "excited", "curious", "brave"]
WEATHER = [
    "The sun was warm.",
    "It was a rainy day.",
    "The wind was strong.",
    "The sky was blue.",
    "It was a cold morning.",
    "Snow was falling.",
]
ACTIONS = ["played with", "looked at", "picked up", "found", "wanted", "lost", "shared"]
ENDINGS = [
    "From that day on, they were best friends.",
    "They laughed and went home together.",
    "It was the best day ever.",
    "Then they ate cake and took a nap.",
    "{Pronoun} learned that it is good to share.",
    "{Pronoun} smiled and said thank you.",
]


def story(rng: random.Random) -> str:
    name, pronoun, possessive = rng.choice(HEROES)
    friend, place, thing = rng.choice(FRIENDS), rng.choice(PLACES), rng.choice(THINGS)
    other = rng.choice([t for t in THINGS if t != thing])
    feeling, later = rng.sample(FEELINGS, 2)
    cap = pronoun.capitalize()
    sentences = [
        f"Once upon a time, there was a {rng.choice(['little', 'young', 'small'])} "
        f"{'girl' if pronoun == 'she' else 'boy'} named {name}.",
        rng.choice(WEATHER),
        f"One day, {name} went to {place} with {possessive} mom.",
        f"At {place}, {pronoun} {rng.choice(ACTIONS)} {thing}.",
        f"{cap} felt {feeling}.",
        f"Then {name} met {friend}.",
        f'"Can I play with {thing.replace("a ", "your ", 1)}?" asked the {friend.split()[-1]}.',
        rng.choice(
            [
                f'"Yes, you can," said {name}.',
                f'"No, it is mine," said {name}, but then {pronoun} felt bad.',
            ]
        ),
        f"They {rng.choice(ACTIONS)} {other} and ran around {place}.",
        f"At the end of the day, {name} was {later}.",
        rng.choice(ENDINGS).format(Pronoun=cap),
    ]
    return " ".join(sentences)


def make_corpus(target_bytes: int, seed: int) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < target_bytes:
        parts.append(story(rng))
        size += len(parts[-1]) + 2
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=400_000, help="approximate output size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("tiny_corpus.txt"), help="output file"
    )
    args = parser.parse_args()
    args.out.write_text(make_corpus(args.bytes, args.seed), encoding="utf-8")


if __name__ == "__main__":
    main()
