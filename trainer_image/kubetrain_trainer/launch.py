"""torchrun, stopped quietly: `python -m kubetrain_trainer.launch [torchrun args]`.

A SIGTERM makes torchrun stop its workers (each saves a checkpoint and exits) and then
raise its SignalException as a traceback; the stop is asked for, so it is an exit
code (128 + the signal) instead, as a shell reports it. A failed worker has printed
why; its exit code (the trainer's contract: 64 config, 65 NaN, ...) is returned in
place of torchrun's traceback and blanket 1.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun


def main() -> int:
    try:
        torchrun()
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    except ChildFailedError as failed:  # the workers said why; their exit code says what
        code = int(failed.get_first_failure()[1].exitcode)
        return code if code > 0 else 128 - code  # a negative code is the killing signal
    return 0


if __name__ == "__main__":
    sys.exit(main())
