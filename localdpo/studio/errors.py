"""The studio's one error type: a refused request, with the HTTP status to answer it with."""

from __future__ import annotations


class StudioError(Exception):
    """A request the studio refuses; `status` is the HTTP status to answer with (4xx)."""

    def __init__(self, status: int, message: str, *, confirm: bool = False):
        super().__init__(message)
        self.status = status
        self.confirm = confirm
        """The request may be sent again with `confirm: true` (a warning, not an error)."""
