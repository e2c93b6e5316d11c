"""`python -m oneforcing ...` is the `oneforcing` command (used to start child runs)."""

import sys

from oneforcing.cli import main

sys.exit(main())
