"""`python -m kubetrain_trainer` is the `kubetrain` command (torchrun runs it with -m)."""

import sys

from kubetrain_trainer.cli import main

sys.exit(main())
