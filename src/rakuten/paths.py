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
    """``$RAKUTEN_WORKDIR`` when set, else the repository root."""
    return Path(os.environ.get("RAKUTEN_WORKDIR", REPO_ROOT))


def default_cache_dir() -> Path:
    """Model/weights cache outside git; shared by all workdirs unless RAKUTEN_CACHE is set."""
    return Path(os.environ.get("RAKUTEN_CACHE", Path.home() / ".cache" / "rakuten"))


@dataclass(frozen=True)
class Paths:
    """The run's roots: ``workdir`` (generated artifacts) and ``data_dir`` (the raw challenge files; None:
    the demo data); the other paths derive from them."""
    workdir: Path
    data_dir: Path | None = None

    @classmethod
    def make(cls, workdir: str | Path | None = None, data_dir: str | Path | None = None) -> "Paths":
        """``Paths`` from the command line's values, resolved to absolute paths (no ``workdir``:
        ``default_workdir()``; no ``data_dir``: None)."""
        wd = Path(workdir).resolve() if workdir else default_workdir().resolve()
        dd = Path(data_dir).resolve() if data_dir else None
        return cls(wd, dd)

    @property
    def folds_dir(self) -> Path:
        """``<workdir>/folds``: the fold files."""
        return self.workdir / "folds"

    @property
    def oof_dir(self) -> Path:
        """``<workdir>/oof``: one folder per experiment."""
        return self.workdir / "oof"

    @property
    def submissions_dir(self) -> Path:
        """``<workdir>/submissions``: submission files and the leaderboard."""
        return self.workdir / "submissions"

    @property
    def cache_dir(self) -> Path:
        """Per-workdir caches that depend on the data (tokenized text, image arrays, embeddings)."""
        return self.workdir / "cache"

    @property
    def prepared_dir(self) -> Path:
        """``<workdir>/cache/prepared``: the cleaned tables of each data download (``data.prepared``)."""
        return self.cache_dir / "prepared"

    @property
    def demo_data_dir(self) -> Path:
        """``<workdir>/data/demo``: where the generated demo data goes."""
        return self.workdir / DEMO_DATA_SUBDIR

    def experiment_dir(self, name: str) -> Path:
        """``<workdir>/oof/<name>``."""
        return self.oof_dir / name

    def require_data_dir(self) -> Path:
        """``data_dir``; raises ``ValueError`` when no ``--data-dir`` was given."""
        if self.data_dir is None:
            raise ValueError("no --data-dir given")
        return self.data_dir
