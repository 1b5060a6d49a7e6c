"""Where localdpo keeps its caches (converted models, reference log-probs)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LOCALDPO_CACHE"


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache directory: `override`, else `$LOCALDPO_CACHE`, else `$XDG_CACHE_HOME/localdpo` (~/.cache)."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "localdpo"
