"""`python -m medinject COMMAND [ARGS...]`: the `medinject` command (see medinject.commands)."""

import sys

from medinject.commands import main

sys.exit(main())
