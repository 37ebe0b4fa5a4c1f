"""Every path the project reads or writes is resolved here, and only here.

``workdir`` holds the generated artifacts (``folds/``, ``oof/``, ``submissions/``, ``cache/``); it
defaults to the repository root. ``data_dir`` holds the raw challenge files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"
# The demo dataset is generated (never shipped) into the workdir on first use.
DEMO_DATA_SUBDIR = "data/demo"


def default_workdir() -> Path:
    return Path(os.environ.get("RAKUTEN_WORKDIR", REPO_ROOT))


def default_cache_dir() -> Path:
    """Model/weights cache outside git; shared by all workdirs unless RAKUTEN_CACHE is set."""
    return Path(os.environ.get("RAKUTEN_CACHE", Path.home() / ".cache" / "rakuten"))


@dataclass(frozen=True)
class Paths:
    workdir: Path
    data_dir: Path | None = None

    @classmethod
    def make(cls, workdir: str | Path | None = None, data_dir: str | Path | None = None) -> "Paths":
        wd = Path(workdir).resolve() if workdir else default_workdir().resolve()
        dd = Path(data_dir).resolve() if data_dir else None
        return cls(wd, dd)

    @property
    def folds_dir(self) -> Path:
        return self.workdir / "folds"

    @property
    def oof_dir(self) -> Path:
        return self.workdir / "oof"

    @property
    def submissions_dir(self) -> Path:
        return self.workdir / "submissions"

    @property
    def cache_dir(self) -> Path:
        """Per-workdir caches that depend on the data (tokenized text, image arrays, embeddings)."""
        return self.workdir / "cache"

    @property
    def prepared_dir(self) -> Path:
        return self.cache_dir / "prepared"

    @property
    def demo_data_dir(self) -> Path:
        return self.workdir / DEMO_DATA_SUBDIR

    def experiment_dir(self, name: str) -> Path:
        return self.oof_dir / name

    def require_data_dir(self) -> Path:
        if self.data_dir is None:
            raise ValueError("no --data-dir given")
        return self.data_dir
