"""Term claims in the store: who writes it now, and the fence that stops everyone else.

    <uri>/_kubetrain/term-00000007.json    the claim of term 7 (lineage.Claim), written once

The current term is the highest claim. A new term is claimed by creating the next
claim only if it does not exist yet (an S3 conditional write, a hard link on a
filesystem), so two starting attempts can never both own a term. A writer of term T
is fenced out once `term-(T+1)` exists: it checks before every commit and delete.
On S3 a check and the write after it are not one atomic step, so a fenced writer
may still land one late commit; lineage makes that commit invisible.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from kubetrain_core.checkpoints.manifest import parse_checkpoint_dir
from kubetrain_core.checkpoints.storage import Storage
from kubetrain_trainer.checkpoint.lineage import Claim, ClaimError, Owner

__all__ = [
    "CLAIMS_DIR",
    "Fenced",
    "StoreConflict",
    "StoreUnreadable",
    "abort_stale_uploads",
    "check_owner",
    "claim_key",
    "claim_next",
    "prune_claims",
    "read_head",
    "superseded",
]

log = logging.getLogger(__name__)

CLAIMS_DIR = "_kubetrain"
_CLAIM = re.compile(r"^term-(\d{8,})\.json$")
_CLAIM_RETRIES = 20
_CLAIMS_KEPT = 16  # older claims are history only; the newest one is the truth


class Fenced(RuntimeError):
    """A newer term owns the store: this writer must not commit or delete anything."""


class StoreConflict(ValueError):
    """The store belongs to another job (two jobs pointed at one URI)."""


class StoreUnreadable(RuntimeError):
    """The store's claims cannot be read now; never read as "the store is empty"."""


def claim_key(term: int) -> str:
    return f"{CLAIMS_DIR}/term-{term:08d}.json"


def _terms(storage: Storage) -> list[int]:
    terms = []
    for key in storage.list_keys(CLAIMS_DIR):
        match = _CLAIM.match(key.rpartition("/")[2])
        if match:
            terms.append(int(match.group(1)))
    return sorted(terms)


def read_head(storage: Storage) -> Claim | None:
    """The newest claim, or None for a store that has never been claimed. A listed
    claim that cannot be read or parsed raises StoreUnreadable: guessing "empty"
    here would start a run over next to its own checkpoints."""
    terms = _terms(storage)
    if not terms:
        return None
    key = claim_key(terms[-1])
    try:
        claim = Claim.from_json(storage.get_bytes(key))
    except FileNotFoundError:
        raise StoreUnreadable(f"{storage.uri(key)} was listed but cannot be read") from None
    except ClaimError as error:
        raise StoreUnreadable(f"{storage.uri(key)} is not a claim: {error}") from None
    if claim.term != terms[-1]:
        raise StoreUnreadable(f"{storage.uri(key)} says term {claim.term}")
    return claim


def check_owner(storage: Storage, head: Claim | None, me: Owner) -> None:
    """Refuse a store that another job writes (StoreConflict, naming both)."""
    if head is None or head.owner.same_job(me):
        if head is not None and head.owner.uid and me.uid and head.owner.uid != me.uid:
            log.warning(
                "%s was written by an earlier %s; %s continues it",
                storage.root_uri,
                head.owner.describe(),
                me.describe(),
            )
        return
    raise StoreConflict(
        f"checkpoint URI {storage.root_uri} already holds the checkpoints of "
        f"{head.owner.describe()}; {me.describe()} must not share them. Give this job "
        "its own checkpoint URI (or leave spec.checkpoint.uri unset for a per-job default)"
    )


def claim_next(storage: Storage, make: Callable[[int, Claim | None], Claim]) -> Claim:
    """Claim the term after the newest one. `make(term, head)` builds the claim from
    the head it continues (and raises if that head is unacceptable); a lost race
    re-reads the head and tries the next term."""
    for _ in range(_CLAIM_RETRIES):
        head = read_head(storage)
        term = head.term + 1 if head is not None else 0
        claim = make(term, head)
        if storage.put_bytes_if_absent(claim_key(term), claim.to_json()):
            log.info("claimed term %d of %s", term, storage.root_uri)
            return claim
        log.warning("term %d of %s was claimed by another writer; retrying", term, storage.uri())
    raise StoreUnreadable(f"could not claim a term of {storage.root_uri} in {_CLAIM_RETRIES} tries")


def superseded(storage: Storage, term: int) -> bool:
    """Whether a newer term than `term` has been claimed."""
    return storage.exists(claim_key(term + 1))


def abort_stale_uploads(storage: Storage, term: int) -> None:
    """Multipart uploads of older terms can never complete: free their parts."""
    for key, upload_id in storage.incomplete_uploads():
        parsed = parse_checkpoint_dir(key.partition("/")[0])
        if parsed is not None and parsed[1] < term:
            log.info("aborting the incomplete upload of %s", storage.uri(key))
            storage.abort_upload(key, upload_id)


def prune_claims(storage: Storage, current: int) -> None:
    """Delete claims far older than `current` (history no reader needs)."""
    for term in _terms(storage):
        if term < current - _CLAIMS_KEPT:
            storage.delete(claim_key(term))
