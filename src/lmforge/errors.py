"""The one error type users see, and how it is printed.

A UserError is something the user can fix: it says what is wrong, where (file, record, key),
and how to fix it. Entry points print it as one paragraph and exit with code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem in the user's input, with the place it was found and the fix."""

    def __init__(self, what: str, *, fix: str | None = None, where: str | None = None):
        self.what = what.strip()
        self.fix = fix.strip() if fix else None
        self.where = where
        super().__init__(self.format())

    def format(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if not text.endswith((".", "?", "!", ":")):
            text += "."
        if self.fix:
            text += f" Fix: {self.fix}"
            if not text.endswith((".", "?", "!")):
                text += "."
        return text
