"""Where a model lives: a local directory or a hub id. Light (no torch), so a command can reject a mistyped path
before its heavy imports."""
from __future__ import annotations

import os

from .errors import UserError


def looks_like_hub_id(path: str) -> bool:
    """owner/name: what the hub accepts as a repository id (a local path never starts with . / or ~)."""
    return not path.startswith((".", "/", "~")) and path.count("/") == 1 and all(path.split("/"))


def check_location(path: str, flag: str) -> None:
    """A path that does not exist and cannot be a hub id is the user's typo: say so, not the hub client's words."""
    if not os.path.exists(path) and not looks_like_hub_id(path):
        raise UserError(f"{flag} {path}: no such directory (and not a hub id of the form owner/name)")
