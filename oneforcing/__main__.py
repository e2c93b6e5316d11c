"""`python -m oneforcing ...` is the `oneforcing` command (used to start child runs)."""

from oneforcing.cli import entry

entry()
