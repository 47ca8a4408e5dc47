"""Log selection of the process kubelet's log endpoint."""

from __future__ import annotations

from localkube.kubelet.server import tail_bytes

LOG = b"one\ntwo\nthree\n"


def test_tail_lines_then_limit_bytes() -> None:
    assert tail_bytes(LOG, None, None) == LOG
    assert tail_bytes(LOG, 2, None) == b"two\nthree\n"
    assert tail_bytes(LOG, 0, None) == b""
    assert tail_bytes(LOG, 10, None) == LOG
    assert tail_bytes(LOG, 2, 5) == b"two\nt"
    assert tail_bytes(b"no newline at end", 1, None) == b"no newline at end"
