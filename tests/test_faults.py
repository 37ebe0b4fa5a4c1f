"""Failures lose nothing: a disk that fills up half way through a write (``OSError(ENOSPC)`` from the
one low-level write under every atomic artifact write, ``artifacts._raw_write``) during a fold, a
stack and an export. The artifacts finished before stay byte-identical, no partial or temporary file
is left, the script's error is one line (no traceback), and a rerun once the disk has room completes.

The scripts run in this process (their ``main``), so the fault can be injected with monkeypatch; the
workdir is a copy of conftest's finished tiny run (TF-IDF and k-NN members, two stacks, a submission).
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import json
import os
import runpy
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow    # the finished tiny run (conftest) and three stages, ~40 s in all


class DiskFull:
    """``_raw_write`` for files whose name matches ``pattern``: ``room`` bytes go through (a short
    write at the limit), then every write raises ENOSPC; other files are written normally."""

    def __init__(self, pattern: str, room: int):
        self.pattern, self.room, self.written, self.hit = pattern, room, 0, False

    def __call__(self, f, data) -> int:
        if not fnmatch.fnmatch(Path(f.name).name, self.pattern):
            return io.FileIO.write(f, data)
        left = self.room - self.written
        if left <= 0:
            self.hit = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = io.FileIO.write(f, memoryview(data)[:left])
        self.written += n
        return n


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def main_of(script: str, argv: list, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``src/<script>``'s ``main(argv)`` run in this process."""
    capsys.readouterr()
    try:
        rc = runpy.run_path(str(REPO / "src" / script))["main"]([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_line(rc: int, err: str, *words: str) -> None:
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    for w in words:
        assert w in lines[0], lines[0]


def assert_nothing_lost(before: dict, after: dict, root: Path) -> None:
    """Every file of ``before`` is still there with the same bytes; no temporary file is left."""
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert changed == [], f"finished artifacts changed or lost: {changed[:10]}"
    leftovers = [k for k in after if k not in before and (Path(k).name.startswith(".") or ".partial" in k)]
    assert leftovers == [], leftovers


@pytest.fixture
def wd(finished, tmp_path):
    preset, src = finished
    dst = tmp_path / "wd"
    shutil.copytree(src, dst, symlinks=True)
    return preset, dst


def test_disk_full_during_a_fold(wd, monkeypatch, capsys):
    from rakuten import artifacts

    _, w = wd
    argv = ["--workdir", w, "--config", "tfidf_char_svm_text", "--fold", "0,1", "--no-progress", "folds.k=3",
            "tfidf.max_features=2000"]
    full = DiskFull(".fold1.skops.*", 2000)       # fold 1's model, 2000 bytes in
    monkeypatch.setattr(artifacts, "_raw_write", full)
    before = digests(w)
    rc, _, err = main_of("run_fold.py", argv, capsys)
    assert full.hit
    assert_one_line(rc, err, "fold1.skops", "No space left on device")
    after = digests(w)
    assert_nothing_lost(before, after, w)
    exp = w / "oof" / "tfidf_char_svm_text"
    assert (exp / "fold0.npz").exists() and not (exp / "models" / "fold1.skops").exists()
    fold0 = {k: v for k, v in after.items() if k.startswith("oof/tfidf_char_svm_text/")}
    monkeypatch.undo()
    rc, out, err = main_of("run_fold.py", argv, capsys)
    assert rc == 0, err[-2000:]
    done = digests(w)
    assert_nothing_lost(before, done, w)
    # fold 0 finished before the fault: kept as it was, not redone (meta.json gains fold 1)
    assert {k: done[k] for k in fold0 if not k.endswith("meta.json")} == \
           {k: v for k, v in fold0.items() if not k.endswith("meta.json")}
    meta = json.loads((exp / "meta.json").read_text())
    assert sorted(meta["folds"]) == ["0", "1"] and (exp / "models" / "fold1.skops").exists()


def test_disk_full_during_a_stack(wd, monkeypatch, capsys):
    from rakuten import artifacts

    _, w = wd
    argv = ["--workdir", w, "--config", "stack_lgbm", "--no-progress", "folds.k=3",
            "stack.inputs=[tfidf_svm_text,knn_tfidf_text]", "lgbm.num_threads=1", "lgbm.num_leaves=7",
            "lgbm.max_bin=31", "lgbm.num_boost_round=10", "lgbm.early_stopping_rounds=0"]
    full = DiskFull(".test_fold1.npz.*", 300)      # fold 1's test predictions, 300 bytes in
    monkeypatch.setattr(artifacts, "_raw_write", full)
    before = digests(w)
    rc, _, err = main_of("stack.py", argv, capsys)
    assert full.hit
    assert_one_line(rc, err, "test_fold1.npz", "No space left on device")
    after = digests(w)
    assert_nothing_lost(before, after, w)
    monkeypatch.undo()
    rc, out, err = main_of("stack.py", argv, capsys)
    assert rc == 0, err[-2000:]
    assert "skipped (already done): folds 0" in out
    done = digests(w)
    assert_nothing_lost({k: v for k, v in after.items() if "oof/stack_lgbm/meta.json" not in k}, done, w)
    assert sorted(json.loads((w / "oof" / "stack_lgbm" / "meta.json").read_text())["folds"]) == ["0", "1", "2"]


def test_disk_full_during_an_export(wd, monkeypatch, capsys, tmp_path):
    from rakuten import artifacts
    from rakuten.bundle import Bundle

    preset, w = wd
    out = tmp_path / "bundle"
    argv = ["--workdir", w, "--preset", preset, "--out", out]
    rc, _, err = main_of("export.py", argv, capsys)
    assert rc == 0, err[-2000:]
    before = digests(out)
    m = json.loads((out / "manifest.json").read_text())
    stack = m["submitted"]
    full = DiskFull(f".{m['members'][stack]['files'][1]}.*", 500)   # the stacker's fold 1, 500 bytes in
    monkeypatch.setattr(artifacts, "_raw_write", full)
    rc, _, err = main_of("export.py", argv, capsys)
    assert full.hit
    assert_one_line(rc, err, m["members"][stack]["files"][1], "No space left on device")
    assert digests(out) == before                   # the bundle there before: byte-identical
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no .partial left
    Bundle(out).close()                             # and it still loads (its hashes hold)
    monkeypatch.undo()
    rc, _, err = main_of("export.py", argv, capsys)
    assert rc == 0, err[-2000:]
    Bundle(out).close()
