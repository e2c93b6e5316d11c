"""User-facing errors.

Anything a user can cause by what they type (a recipe, an override, a path) raises a
`UserError`. Entry points catch it, print its single line and exit with code 2; everything
else is a bug and keeps its traceback.
"""


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
        return f"{where}: {self.message}" if where else self.message

    def at(self, *, file: str | None = None, key: str | None = None) -> "UserError":
        """Return a copy located at `file` / `key` (keeps what is already set)."""
        err = type(self)(self.message, file=self.file or file, key=self.key or key)
        return err


class RecipeError(UserError):
    """A malformed recipe, override or component configuration."""


class RegistryError(UserError):
    """An unknown, duplicate or unbuildable registered component."""
