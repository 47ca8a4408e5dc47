"""Make a small base model for the Hugging Face examples, offline, in a few seconds.

    python examples/make_base_model.py examples/models/chat-base [--arch llama]

A byte-level BPE tokenizer is trained on the shipped corpus (examples/data/
tiny_corpus.txt) with ChatML special tokens and template, and a randomly initialised
causal LM of the chosen architecture is built from a transformers config; both are
written with `save_pretrained`, so the directory is what `model.pretrained` expects
of any Hugging Face model (and what `from_pretrained` loads). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHATML = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Small enough to train on 2 CPUs in minutes; the same shapes for every architecture.
WIDTH, LAYERS, HEADS, POSITIONS = 96, 2, 4, 512


def architecture(arch: str, vocab: int, ids: dict[str, int]) -> Any:
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common: dict[str, Any] = {
        "vocab_size": vocab,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|pad|>"],
        "tie_word_embeddings": True,
    }
    if arch == "gpt2":
        return GPT2Config(
            n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS, **common
        )
    decoder = {
        "hidden_size": WIDTH,
        "intermediate_size": 2 * WIDTH,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS // 2,
        "max_position_embeddings": POSITIONS,
        **common,
    }
    return (LlamaConfig if arch == "llama" else Qwen2Config)(**decoder)


def tokenizer(corpus: Path, vocab_size: int) -> Any:
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
    bpe.train([str(corpus)], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML
    return fast


def make(
    out: Path,
    arch: str = "llama",
    corpus: Path = HERE / "data" / "tiny_corpus.txt",
    vocab_size: int = 1024,
    seed: int = 0,
) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    tok = tokenizer(corpus, vocab_size)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(architecture(arch, len(tok), ids))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", choices=["llama", "gpt2", "qwen2"], default="llama")
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    out = make(args.out, args.arch, vocab_size=args.vocab_size)
    print(f"wrote a {args.arch} base model and its tokenizer to {out}")


if __name__ == "__main__":
    main()
