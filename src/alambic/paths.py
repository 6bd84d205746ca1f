"""Where alambic keeps its files: the user's data dir (database) and cache dir (converted models), and the
fingerprints that key cached results."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import platformdirs


def data_dir() -> Path:
    return Path(os.environ.get("ALAMBIC_DATA_DIR") or platformdirs.user_data_dir("alambic"))


def cache_dir() -> Path:
    return Path(os.environ.get("ALAMBIC_CACHE_DIR") or platformdirs.user_cache_dir("alambic"))


def default_database_url() -> str:
    path = data_dir() / "alambic.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def fingerprint(settings: dict, *paths: Path) -> str:
    """A hash of the settings and of the files (every file under a directory) that make a cached result: its
    key, so that a change to the code or the settings makes a new one instead of reusing a stale one."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in paths:
        for file in sorted(path.rglob("*") if path.is_dir() else [path]):
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(path.parent)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]
