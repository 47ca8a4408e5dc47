"""Scores of generated text against references: BLEU, ROUGE, exact match, token accuracy.

The trainer generates text for validation records and hands each metric named in
``evaluation.metrics`` the whole batch at once, as three parallel lists: what the model
wrote, what it should have written, and the prompt it was given. Corpus-level scores
(BLEU) need the whole list, not a mean of per-sample scores, hence one call per corpus.

sacrebleu and rouge-score are imported when a metric is built, not with this module, so
that the config and the registry can name metrics without loading them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from statistics import fmean
from typing import ClassVar


class TextMetric(ABC):
    """A score of generated text, chosen by name in ``evaluation.metrics``.

    The contract, for built-ins and plugins alike:

    - The class is constructed with no arguments (the trainer builds it by name).
    - ``compute(predictions, references, prompts)`` receives three sequences of equal,
      non-zero length, item ``i`` of each describing the same validation record; a metric
      may ignore ``references`` or ``prompts``. Call :func:`check_inputs` first: it raises
      ``ValueError`` on empty or mismatched input and ``TypeError`` on a bare string.
    - It returns one or more named floats. Each name is logged as ``val_<name>``, so names
      are identifiers, lowercase by convention (``bleu``, ``rouge1``; ``rougeL`` keeps
      rouge-score's spelling), and unique across the metrics of one run: a domain metric
      prefixes its own (``recipe_format``).
    - It is deterministic and never touches the model: it sees only text.
    - ``names``, when set, lists the names ``compute`` returns, so that a run whose early
      stopping or best checkpoints watch a metric nobody logs is refused at start.
    """

    names: ClassVar[tuple[str, ...] | None] = None

    @abstractmethod
    def compute(
        self, predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str]
    ) -> dict[str, float]:
        """Named scores of ``predictions`` (against ``references`` where the metric uses them)."""


def check_inputs(
    predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str]
) -> None:
    """Refuse input that no metric can score meaningfully, with the reason."""
    named = {"predictions": predictions, "references": references, "prompts": prompts}
    for name, texts in named.items():
        # A str is a Sequence[str] too: scoring its characters would be silently wrong.
        if isinstance(texts, str):
            raise TypeError(f"{name} must be a sequence of strings, not a single string")
    if not (len(predictions) == len(references) == len(prompts)):
        raise ValueError(
            f"predictions, references and prompts differ in length: {len(predictions)}, "
            f"{len(references)}, {len(prompts)}; they must describe the same records"
        )
    if not predictions:
        raise ValueError("no predictions to score: the metrics need at least one record")


def normalize_whitespace(text: str) -> str:
    """``text`` without surrounding whitespace and with every inner run of it one space."""
    return " ".join(text.split())


class Bleu(TextMetric):
    """Corpus BLEU (0-100) by sacrebleu with its defaults (13a tokenizer, exp smoothing,
    case-sensitive), one reference per prediction: ``{"bleu": ...}`` (registry ``bleu``)."""

    names = ("bleu",)

    def __init__(self) -> None:
        from sacrebleu.metrics.bleu import BLEU

        self._bleu = BLEU()

    def compute(
        self, predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str]
    ) -> dict[str, float]:
        check_inputs(predictions, references, prompts)
        # sacrebleu takes reference *streams*: one list per reference set, aligned with the
        # predictions; there is one set here.
        score = self._bleu.corpus_score(list(predictions), [list(references)])
        return {"bleu": float(score.score)}


class Rouge(TextMetric):
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 (0-1) by rouge-score with Porter stemming, each the
    mean over records: ``{"rouge1", "rouge2", "rougeL"}`` (registry ``rouge``).

    rouge-score lowercases and keeps only ``[a-z0-9]`` tokens, so it is language-specific:
    text in other scripts scores 0.
    """

    KINDS = ("rouge1", "rouge2", "rougeL")
    names = KINDS

    def __init__(self) -> None:
        from rouge_score import rouge_scorer  # type: ignore[import-untyped]

        self._scorer = rouge_scorer.RougeScorer(list(self.KINDS), use_stemmer=True)

    def compute(
        self, predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str]
    ) -> dict[str, float]:
        check_inputs(predictions, references, prompts)
        # RougeScorer.score takes (target, prediction): the reference comes first.
        pairs = zip(predictions, references, strict=True)
        scores = [self._scorer.score(ref, pred) for pred, ref in pairs]
        return {kind: fmean(float(s[kind].fmeasure) for s in scores) for kind in self.KINDS}


class ExactMatch(TextMetric):
    """Fraction of predictions equal to their reference once both are stripped of surrounding
    whitespace and every inner run of whitespace is one space; case and punctuation count:
    ``{"exact_match": ...}`` in [0, 1] (registry ``exact_match``)."""

    names = ("exact_match",)

    def compute(
        self, predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str]
    ) -> dict[str, float]:
        check_inputs(predictions, references, prompts)
        matches = sum(
            normalize_whitespace(pred) == normalize_whitespace(ref)
            for pred, ref in zip(predictions, references, strict=True)
        )
        return {"exact_match": matches / len(predictions)}


class TokenAccuracy(TextMetric):
    """Token accuracy over the corpus: ``{"accuracy": ...}`` in [0, 1] (registry ``accuracy``).

    Texts are split on whitespace (``str.split()``). For each record, reference token ``i``
    is correct when the prediction's token ``i`` exists and is identical (case-sensitive).
    The score is the number of correct tokens summed over all records divided by the number
    of reference tokens summed over all records: a record weighs by its reference's length.
    A prediction shorter than its reference gets its missing tokens wrong; tokens beyond
    the reference's length are not counted (use ``exact_match`` to penalise them). One
    inserted or dropped token shifts the rest out of position, so this suits fixed-format
    answers, not free text. If no reference has a token, the score is 0.0.

    Example: prediction ``"a b x"`` for reference ``"a b c d"`` gets 2 of 4 right.
    """

    names = ("accuracy",)

    def compute(
        self, predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str]
    ) -> dict[str, float]:
        check_inputs(predictions, references, prompts)
        correct = total = 0
        for pred, ref in zip(predictions, references, strict=True):
            ref_tokens = ref.split()
            # zip stops at the shorter: missing predicted tokens add nothing to `correct`.
            correct += sum(p == r for p, r in zip(pred.split(), ref_tokens, strict=False))
            total += len(ref_tokens)
        return {"accuracy": correct / total if total else 0.0}
