"""Write the chat datasets of the fine-tuning examples: examples/data/chat-*.jsonl.

Each line is one conversation, `{"messages": [{"role": ..., "content": ...}, ...]}`,
the shape OpenAI-style and Hugging Face chat datasets use. The answers follow from
the questions by fixed rules (a small model can learn them in minutes) and a few
records carry a system prompt or two turns. The output is a pure function of
``--seed``; the committed files were made with the defaults:

    python examples/data/make_chat.py
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
COLORS = {"sky": "blue", "grass": "green", "snow": "white", "sun": "yellow", "coal": "black"}
OPPOSITES = {
    "big": "small",
    "hot": "cold",
    "fast": "slow",
    "happy": "sad",
    "up": "down",
    "light": "dark",
    "old": "new",
    "early": "late",
    "loud": "quiet",
    "full": "empty",
}
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


def stories_turn(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["color", "opposite", "count"])
    if kind == "color":
        thing = rng.choice(list(COLORS))
        return f"What color is the {thing}?", f"The {thing} is {COLORS[thing]}."
    if kind == "opposite":
        word = rng.choice(list(OPPOSITES))
        return f"What is the opposite of {word}?", f"The opposite of {word} is {OPPOSITES[word]}."
    n = rng.randrange(1, 10)
    return f"What comes after {NUMBERS[n - 1]}?", f"After {NUMBERS[n - 1]} comes {NUMBERS[n]}."


def arithmetic_turn(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(0, 6), rng.randrange(0, 5)
    if rng.random() < 0.5:
        return (
            f"What is {NUMBERS[a]} plus {NUMBERS[b]}?",
            f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}.",
        )
    hi, lo = max(a, b), min(a, b)
    return (
        f"What is {NUMBERS[hi]} minus {NUMBERS[lo]}?",
        f"{NUMBERS[hi]} minus {NUMBERS[lo]} is {NUMBERS[hi - lo]}.",
    )


def conversation(rng: random.Random, turn) -> dict[str, list[dict[str, str]]]:  # type: ignore[no-untyped-def]
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.3 else []
    for _ in range(2 if rng.random() < 0.25 else 1):
        question, answer = turn(rng)
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    return {"messages": messages}


def write(path: Path, turn, count: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    lines = [json.dumps(conversation(rng, turn)) for _ in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--count", type=int, default=800)
    args = parser.parse_args()
    write(HERE / "chat-facts.jsonl", stories_turn, args.count, args.seed)
    write(HERE / "chat-arithmetic.jsonl", arithmetic_turn, args.count, args.seed + 1)


if __name__ == "__main__":
    main()
