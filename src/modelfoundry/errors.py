"""The one exception type for mistakes a user can fix (bad config, bad data, bad input).

The CLI prints these as one clean message and exits with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem in the user's config, data or input, with a message that says how to fix it."""


class InputError(UserError):
    """A request input the model cannot take, naming the field at fault (`inputs.2`, `inputs.0.color`);
    the HTTP service answers it with `status` and its one error shape."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


# how alike a name must be to be suggested (difflib ratio): a typo or two ("lable", "epoch", "h10")
# passes; a name that merely shares letters ("target" and "worst area": 0.5) does not
CLOSE = 0.6


def did_you_mean(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean 'x'?' for the closest choices, or '' when nothing is close.

    Case is compared last: 'A' finds 'a', at the same closeness, when nothing matches as written."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), choices, n=n, cutoff=CLOSE)
    if not close:
        lowered: dict[str, str] = {}
        for c in choices:
            lowered.setdefault(c.lower(), c)
        close = [
            lowered[c]
            for c in difflib.get_close_matches(str(value).lower(), list(lowered), n=n, cutoff=CLOSE)
        ]
    if not close:
        return ""
    return " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
