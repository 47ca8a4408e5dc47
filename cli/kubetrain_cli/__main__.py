"""`python -m kubetrain_cli` is the `kubetrain` command."""

import sys

from kubetrain_cli.cli import main

sys.exit(main())
