"""Where alambic keeps its files: the user's data dir (database) and cache dir (converted models)."""

from __future__ import annotations

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
