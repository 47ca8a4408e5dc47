"""The frozen trunk's activations, cached per input row (seed 003's activation cache).

In stage k of a progressive run with a frozen trunk, the stream after the trunk is a
fixed function of the row it reads: the cache keeps it, keyed by the row's token
ids, so a row seen again (an evaluation batch, the next epoch, the same masked
sequence) skips the trunk's forward. It holds one stage's trunk (cleared when the
stage changes), is bounded in bytes and evicts the least recently used rows first.
The entries stay on the device that computed them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch


class ActivationCache:
    """Rows' trunk outputs for one stage; `hits`, `misses` count rows."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def hidden(
        self, ids: torch.Tensor, trunk: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """The trunk's output for every row of `ids` ``[B, T]``: cached rows as stored,
        the others computed by `trunk` in one batch and stored."""
        keys = [row.tobytes() for row in ids.cpu().numpy()]
        missing = [i for i, key in enumerate(keys) if key not in self.entries]
        computed: dict[bytes, torch.Tensor] = {}
        if missing:
            out = trunk(ids[missing])
            # Copies: a view would keep the whole batch's output alive.
            computed = {keys[i]: row.clone() for i, row in zip(missing, out, strict=True)}
        rows = []
        for key in keys:
            row = computed.get(key)
            if row is None:
                row = self.entries[key]
                self.entries.move_to_end(key)
            rows.append(row)
        for key, row in computed.items():
            self._store(key, row)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack(rows)

    def _store(self, key: bytes, row: torch.Tensor) -> None:
        size = row.numel() * row.element_size()
        if size > self.max_bytes:
            return
        while self.bytes + size > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        self.entries[key] = row
        self.bytes += size
