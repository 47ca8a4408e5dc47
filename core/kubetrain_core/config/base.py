"""What every config section shares: strict models, bounded names checked against
their registries, and the URI patterns the CRD repeats verbatim."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from kubetrain_core.registry import Registry, UnknownComponentError

# A validation metric: val_loss, val_perplexity or val_<name> of an evaluation metric
# (val_bleu, val_rougeL, val_recipe_format, ...), as metrics.jsonl logs it.
MetricName = Annotated[
    str, Field(min_length=5, max_length=64, pattern=r"^val_[A-Za-z][A-Za-z0-9_]*$")
]
MetricMode = Literal["auto", "min", "max"]
"""Which way a metric improves; auto: lower for *loss and *perplexity, higher otherwise
(BLEU, ROUGE, accuracy), as Hugging Face's Trainer decides for metric_for_best_model."""


def lower_is_better(metric: str, mode: str) -> bool:
    """Whether smaller values of `metric` are better under `mode` (MetricMode)."""
    if mode != "auto":
        return mode == "min"
    return metric.endswith(("loss", "perplexity"))


# A registered name, or a plugin's import path (package.module:Name).
Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^(?:[a-z][a-z0-9_]*|[A-Za-z_][A-Za-z0-9_]*(?:[.][A-Za-z_][A-Za-z0-9_]*)*"
        r":[A-Za-z_][A-Za-z0-9_]*)$",
    ),
]
PLUGINS = "plugins"
"""Validation context key: how far component names are checked. ``names`` (default):
registered, an entry point, or an import path's syntax, importing nothing. ``import``
(the trainer, where the image's packages are): plugins are imported, so one that
cannot be is an error naming its field. ``unchecked`` (the operator, which has none
of the image's packages): any well-formed name; the trainer checks it at start."""

# Checkpoint URIs: whole path segments of safe characters, never ".", ".." or empty,
# no whitespace, "#", "?" or "%" (one URI must name one place, however it is parsed).
# RE2-compatible (no lookaround): the CRD's OpenAPI pattern is the same text.
_SAFE, _SAFE_DOT = r"[A-Za-z0-9_~+=,@-]", r"[A-Za-z0-9_.~+=,@-]"
_SEGMENT = rf"(?:{_SAFE}{_SAFE_DOT}*|\.{_SAFE}{_SAFE_DOT}*|\.\.{_SAFE_DOT}+)"
_S3_URI = rf"s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9](?:/{_SEGMENT})*/?"
_FILE_URI = rf"file://(?:/{_SEGMENT})+/?"
CHECKPOINT_URI_PATTERN = rf"^(?:{_S3_URI}|{_FILE_URI})$"
# An http(s) endpoint: host, optional port and path; no credentials in it.
ENDPOINT_PATTERN = r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9_.~/-]*)?$"
# A local path or URI of data or a model: printable, no control characters.
LOCATION = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f]+$")]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, docstrings are descriptions."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


def registered(reg: Registry, also: tuple[str, ...] = ()) -> AfterValidator:
    """Validate a component name against its registry (or `also`), listing what is allowed;
    the validation context's PLUGINS says how far (above)."""

    def check(name: str, info: ValidationInfo) -> str:
        mode = (info.context or {}).get(PLUGINS, "names")
        if name in also or mode == "unchecked":
            return name
        if name not in reg:
            allowed = ", ".join([*also, *reg.names()])
            raise ValueError(
                f"unknown {reg.kind} {name!r}; allowed: {allowed}, or a plugin's "
                "package.module:Name"
            )
        if mode == "import" and reg.is_plugin(name):
            try:
                reg.get(name)
            except UnknownComponentError as err:
                raise ValueError(str(err)) from None
        return name

    return AfterValidator(check)
