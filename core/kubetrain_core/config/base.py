"""What every config section shares: strict models, bounded names checked against
their registries, and the URI patterns the CRD repeats verbatim."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from kubetrain_core.registry import Registry

BestMetric = Literal["val_loss", "val_perplexity"]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_]*$")]

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
    """Validate a component name against its registry (or `also`), listing what is allowed."""

    def check(name: str) -> str:
        if name not in reg and name not in also:
            allowed = ", ".join([*also, *reg.names()])
            raise ValueError(f"unknown {reg.kind} {name!r}; allowed: {allowed}")
        return name

    return AfterValidator(check)
