"""Make a small base model for the Hugging Face examples, offline, from shipped text.

    python examples/make_base_model.py examples/models/chat-base [--arch llama]
    python examples/make_base_model.py examples/models/recipe-base --preset recipe

A byte-level BPE tokenizer is trained on shipped text with ChatML special tokens and
template, and a causal LM of the chosen architecture is built from a transformers
config; both are written with `save_pretrained`, so the directory is what
`model.pretrained` expects of any Hugging Face model (and what `from_pretrained`
loads). Nothing is downloaded.

Two presets:

- `toy` (the default; examples/models/chat-base, used by finetune-chat.yaml and the
  tests): a 96-wide, 2-layer model, randomly initialised, made in a few seconds.
- `recipe` (examples/models/recipe-base, used by finetune-lora.yaml): a 128-wide,
  4-layer model that is then briefly pretrained (a plain full-parameter causal-LM
  loop, about a minute on one CPU core) on the shipped stories (examples/data/
  tiny_corpus.txt) and on a cookbook of plain-text recipes for other dishes than
  those of examples/data/recipes.jsonl (`cookbook` below). LoRA needs a base that
  already models text: on a random one a few % of the weights cannot learn much. The
  fine-tune then teaches it to answer a chat request, for dishes it has not seen.

The output depends only on the seed and the shipped files: the pretraining runs on one
thread with deterministic algorithms, so every build with the same torch on the same
kind of CPU writes the same bytes.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import time
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
STORIES = HERE / "data" / "tiny_corpus.txt"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHATML = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Preset(NamedTuple):  # not a dataclass: the tests load this file as a bare module
    width: int
    layers: int
    heads: int
    intermediate: int
    positions: int = 512
    vocab_size: int = 1024
    # The short pretraining pass (steps 0: random initialisation only).
    pretrain_steps: int = 0
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    # The tokenizer's end token, where generation stops: a chat model's is the end of
    # its turn (as in Qwen's chat models), since a reply ends there, not at the end of
    # the text.
    eos: str = "<|endoftext|>"


PRESETS = {
    # Small enough to train on 2 CPUs in minutes; the same shapes for every architecture.
    "toy": Preset(width=96, layers=2, heads=4, intermediate=192),
    # Wide and deep enough that LoRA with a small rank on the attention projections is a
    # few % of the weights; pretrained long enough to write recipes and stories.
    "recipe": Preset(
        width=128, layers=4, heads=4, intermediate=384, pretrain_steps=300, eos="<|im_end|>"
    ),
}


def architecture(arch: str, vocab: int, ids: dict[str, int], shape: Preset) -> Any:
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common: dict[str, Any] = {
        "vocab_size": vocab,
        "bos_token_id": ids["<|endoftext|>"],
        # generate() stops at either: the end of a turn or the end of a document.
        "eos_token_id": ids[shape.eos]
        if shape.eos == "<|endoftext|>"
        else [ids[shape.eos], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|pad|>"],
        "tie_word_embeddings": True,
    }
    if arch == "gpt2":
        return GPT2Config(
            n_embd=shape.width,
            n_layer=shape.layers,
            n_head=shape.heads,
            n_positions=shape.positions,
            **common,
        )
    decoder = {
        "hidden_size": shape.width,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.heads // 2,
        "max_position_embeddings": shape.positions,
        **common,
    }
    return (LlamaConfig if arch == "llama" else Qwen2Config)(**decoder)


def tokenizer(corpus: Path | list[str], vocab_size: int, eos: str = "<|endoftext|>") -> Any:
    """A byte-level BPE tokenizer trained on a file or on texts, with ChatML's tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if isinstance(corpus, Path):
        bpe.train([str(corpus)], trainer=trainer)
    else:
        bpe.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token=eos,
        pad_token="<|pad|>",
        additional_special_tokens=[t for t in ("<|im_start|>", "<|im_end|>") if t != eos],
    )
    fast.chat_template = CHATML
    return fast


def _recipes_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_recipes", HERE / "data" / "make_recipes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The cookbook the recipe base is pretrained on: recipes of new mains in the styles of
# examples/data/recipes.jsonl, and of every main (theirs and these) in new styles. So the
# base has read each ingredient and each kind of dish, but never one dish of the
# fine-tuning data (no main is ever cooked in one of its styles there).
COOKBOOK_MAINS = ["pork", "lamb", "shrimp", "eggs", "lentils", "turkey"]
COOKBOOK_STYLES: dict[str, tuple[list[tuple[int, str, str]], list[str]]] = {
    "roast": (
        [(1, "", "potato"), (1, "", "lemon"), (1, "tbsp", "oil")],
        [
            "Heat the oven.",
            "Rub the {main} and potato with the oil.",
            "Roast for forty minutes.",
            "Squeeze the lemon over and serve hot.",
        ],
    ),
    "pie": (
        [(1, "cup", "flour"), (1, "tbsp", "butter"), (1, "", "leek")],
        [
            "Rub the flour and butter into a dough.",
            "Cook the {main} and leek in a pan.",
            "Cover with the dough.",
            "Bake for half an hour and serve warm.",
        ],
    ),
    "wrap": (
        [(1, "", "flatbread"), (1, "", "cucumber"), (1, "tbsp", "yogurt")],
        [
            "Grill the {main}.",
            "Slice the cucumber.",
            "Spread the yogurt on the flatbread.",
            "Roll everything up and serve cold.",
        ],
    ),
}


def cookbook(seed: int = 0) -> list[str]:
    """Plain-text recipes: a sentence that names the dish, then the recipe in the
    layout of examples/data/make_recipes.py, for one to six people; the kind of text a
    real base model has read somewhere."""
    recipes = _recipes_module()
    styles = {**recipes.STYLES, **COOKBOOK_STYLES}
    dishes = [(main, style) for main in COOKBOOK_MAINS for style in recipes.STYLES]
    dishes += [
        (main, style) for main in recipes.MAINS + COOKBOOK_MAINS for style in COOKBOOK_STYLES
    ]
    assert not {(m, s) for m in recipes.MAINS for s in recipes.STYLES} & set(dishes)
    texts = [
        f"A recipe for {main} {style} for {recipes.NUMBERS[people - 1]}.\n"
        + recipes.recipe(main, style, people, styles)
        for main, style in dishes
        for people in range(1, len(recipes.NUMBERS) + 1)
    ]
    random.Random(seed).shuffle(texts)
    return texts


def paragraphs(corpus: Path) -> list[str]:
    return [p.strip() for p in corpus.read_text().split("\n\n") if p.strip()]


def _token_stream(tok: Any, texts: list[str]) -> list[int]:
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for encoded in tok(texts, add_special_tokens=False)["input_ids"]:
        ids += [*encoded, eos]
    return ids


def pretrain(model: Any, tok: Any, texts: list[str], shape: Preset, *, seed: int, log: bool) -> Any:
    """A short full-parameter causal-LM pass over `texts`: shuffled, joined by
    <|endoftext|> and packed into rows of seq_len tokens; AdamW, warmup then cosine
    decay. One thread and deterministic algorithms, so the result is a function of the
    seed and the texts."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        texts = list(texts)
        random.Random(seed).shuffle(texts)
        stream = torch.tensor(_token_stream(tok, texts))
        rows = stream[: len(stream) // shape.seq_len * shape.seq_len].view(-1, shape.seq_len)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=shape.lr, weight_decay=0.01, betas=(0.9, 0.95)
        )
        warmup = max(1, shape.pretrain_steps // 10)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, shape.pretrain_steps - warmup)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        model.train()
        started = time.monotonic()
        for step in range(shape.pretrain_steps):
            batch = rows[torch.randint(len(rows), (shape.batch_size,), generator=generator)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if log and (step + 1) % 50 == 0:
                print(
                    f"pretrain step {step + 1}/{shape.pretrain_steps} loss {loss.item():.3f} "
                    f"({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
        model.eval()
        return model
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def make(
    out: Path,
    arch: str = "llama",
    corpus: Path = STORIES,
    vocab_size: int | None = None,
    seed: int = 0,
    *,
    preset: str = "toy",
    log: bool = False,
) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    shape = PRESETS[preset]
    vocab = vocab_size or shape.vocab_size
    # A pretrained base's tokenizer learns from the texts the model is pretrained on.
    texts = paragraphs(corpus) + cookbook(seed) if shape.pretrain_steps else []
    tok = tokenizer(texts or corpus, vocab, shape.eos)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(architecture(arch, len(tok), ids, shape))
    if shape.pretrain_steps:
        model = pretrain(model, tok, texts, shape, seed=seed, log=log)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", choices=["llama", "gpt2", "qwen2"], default="llama")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    parser.add_argument("--vocab-size", type=int, default=None)
    args = parser.parse_args()
    started = time.monotonic()
    out = make(args.out, args.arch, vocab_size=args.vocab_size, preset=args.preset, log=True)
    print(
        f"wrote a {args.preset} {args.arch} base model and its tokenizer to {out} "
        f"in {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
