"""User-facing errors.

Anything a user can cause by what they type (a recipe, an override, a path) raises a
`UserError`. Entry points catch it, print its single line and exit with code 2. A component
that fails while it is built from the recipe raises something else (a ValueError from a library,
say): `build` turns that into a `ComponentError` naming the component's dotted key, keeping the
original as its cause (printed with ONEFORCING_DEBUG=1). Other exceptions keep their traceback.
"""

MAX_MESSAGE = 600  # characters of a message shown; a quoted 200,000-character value is cut


class UserError(Exception):
    """An error in the user's input; `str(err)` is one self-contained line."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.message = message
        self.file = file
        self.key = key
        super().__init__(self.format())

    def format(self) -> str:
        where = ": ".join(part for part in (self.file, self.key) if part)
        return one_line(f"{where}: {self.message}" if where else self.message)

    def at(self, *, file: str | None = None, key: str | None = None) -> "UserError":
        """Return a copy located at `file` / `key` (keeps what is already set)."""
        err = type(self)(self.message, file=self.file or file, key=self.key or key)
        err.__cause__ = self.__cause__
        return err


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` on one line, cut in the middle when longer than `limit` characters."""
    text = " ".join(text.split("\n"))
    text = text.replace("\r", " ")
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]} ...[{len(text) - 2 * keep} characters cut]... {text[-keep:]}"


class RecipeError(UserError):
    """A malformed recipe, override or component configuration."""


class RegistryError(UserError):
    """An unknown, duplicate or unbuildable registered component."""


class ComponentError(UserError):
    """A component raised something other than a UserError while it was built from a recipe."""


def report(err: UserError) -> int:
    """Print `err` as the one `error:` line on stderr (with its cause's traceback when
    ONEFORCING_DEBUG is set); returns the exit code."""
    import os
    import sys
    import traceback

    if os.environ.get("ONEFORCING_DEBUG") and err.__cause__ is not None:
        traceback.print_exception(err.__cause__, file=sys.stderr)
    print(f"error: {err}", file=sys.stderr)
    return err.exit_code


def did_you_mean(name: str, choices, *, n: int = 1, cutoff: float = 0.6) -> str:
    """' did you mean 'x'?' (or 'x', 'y'?) for the closest of `choices`, or '' when none is close:
    the hint every 'unknown ...' message of the library appends."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)
    return f" did you mean {', '.join(repr(c) for c in close)}?" if close else ""
