"""Bad inputs through the real stage scripts: one line on stderr, exit 2, and nothing on disk touched.

The workdir is the synthetic one of ``synthetic.py`` (finished upstream experiments, a fold file and
a ChallengeData-format dataset), so "nothing touched" is checked against finished work.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


@pytest.fixture
def synth(tmp_path):
    """A fresh finished synthetic workdir (each test may damage its own)."""
    return make_synthetic(tmp_path / "wd")


def script(name: str, paths, *args, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "src" / name), "--workdir", str(paths.workdir),
           "--data-dir", str(paths.data_dir), *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its size and mtime: what "nothing touched" compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, no traceback, exactly one error line (ours: ``error: ...``; argparse's:
    ``<script>.py: error: ...``) holding every one of ``words``."""
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:") or ".py: error:" in line]
    assert len(errors) == 1, r.stderr[-2000:]
    for w in words:
        assert w in errors[0], errors[0]


def _small_stack(paths, *extra):
    return script("stack.py", paths, "--config", "stack_lgbm", "--no-progress", "lgbm.num_threads=1",
                  "lgbm.num_leaves=7", "lgbm.max_bin=31", "lgbm.num_boost_round=10",
                  "lgbm.early_stopping_rounds=0", *extra)


def test_failed_stack_with_changed_config_keeps_the_finished_experiment(synth):
    r = _small_stack(synth)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = synth.oof_dir / "stack_lgbm" / "meta.json"
    before = meta.read_text()
    # a changed config that then fails (fold 9 does not exist): the finished stack must survive
    r = _small_stack(synth, "lgbm.min_data_in_leaf=5", "--fold", "9")
    assert_one_line_error(r, "fold 9")
    assert meta.read_text() == before
    assert len(json.loads(before)["folds"]) == 5


def test_leaderboard_is_not_replaced_by_an_empty_one(synth):
    r = script("leaderboard.py", synth)
    assert r.returncode == 0, r.stderr[-2000:]
    board = synth.submissions_dir / "leaderboard.json"
    good = board.read_text()
    assert json.loads(good)
    # the fold file changes under the finished experiments: none of them is listed any more
    fold_file = next(synth.folds_dir.glob("folds_*.csv"))
    lines = fold_file.read_text().splitlines()
    fold_file.write_text("\n".join(lines[:1] + lines[2:] + lines[1:2]) + "\n")
    r = script("leaderboard.py", synth)
    assert_one_line_error(r, "leaderboard")
    assert board.read_text() == good


def test_failed_fuse_with_changed_config_keeps_the_finished_experiment(synth):
    small = ["--config", "fusion_late_weighted", "--no-progress", "train.epochs=3", "train.early_stop=fixed"]
    r = script("fuse.py", synth, *small)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = synth.oof_dir / "fusion_late_weighted" / "meta.json"
    before = meta.read_text()
    r = script("fuse.py", synth, *small, "train.lr=0.01", "--fold", "9")
    assert_one_line_error(r, "fold 9")
    assert meta.read_text() == before


# ------------------------------------------------------------------------------ the bad-input matrix
# Every stage script on a finished tiny workdir (conftest ``finished``), each given one bad input. Each
# must exit 2 with one error line naming the problem, print no traceback, and change no file of the
# finished workdir (checked over the whole batch: the cases run in parallel to keep this file under a
# minute, since each is mostly interpreter and import start-up).
#   placeholders: {wd} finished workdir, {preset} its preset, {ro} a read-only copy of it, {file} a
#   plain file, {d:<kind>} a broken copy of its data folder, {missing} a path that does not exist
RF = ["run_fold.py", "--workdir", "{wd}", "--config", "tfidf_svm_text", "--fold", "0"]
ST = ["stack.py", "--workdir", "{wd}", "--config", "stack_cpu_text_lgbm", "folds.k=3",
      "stack.inputs=[tfidf_svm_text,knn_tfidf_text]"]
TU = ["tune.py", "--workdir", "{wd}", "--config", "stack_cpu_text_lgbm", "--trials", "1"]
TU_OV = ["folds.k=3", "stack.inputs=[tfidf_svm_text,knn_tfidf_text]"]
SU = ["submit.py", "--workdir", "{wd}", "--exp", "stack_cpu_text_lgbm"]
RA = ["run_all.py", "--workdir", "{wd}", "--preset", "{preset}", "--no-progress"]
PR = ["predict.py", "--bundle", "{missing}", "--input", "{wd}/data/demo/X_test_update.csv", "--out", "{missing}.csv"]
MATRIX = [
    # config values: type, range, allowed values, unknown keys, malformed overrides
    ("run_fold:epochs=abc", RF + ["folds.k=3", "train.epochs=abc"], "train.epochs"),
    ("run_fold:lr=-1", RF + ["folds.k=3", "train.lr=-1"], "train.lr"),
    ("run_fold:batch_size=0", RF + ["folds.k=3", "train.batch_size=0"], "train.batch_size"),
    ("run_fold:epochs=0", RF + ["folds.k=3", "train.epochs=0"], "train.epochs"),
    ("run_fold:tfidf.C=abc", RF + ["folds.k=3", "tfidf.C=abc"], "tfidf.C"),
    ("run_fold:field=price", RF + ["folds.k=3", "data.field=price"], "data.field"),
    ("run_fold:unknown key", RF + ["folds.k=3", "nosuch.key=1"], "nosuch"),
    ("run_fold:--force, epochs=abc", ["run_fold.py", "--workdir", "{wd}", "--config", "image_tiny", "--fold", "0",
                                      "--force", "folds.k=3", "train.epochs=abc"], "train.epochs"),
    ("run_fold:no '='", RF + ["folds.k=3", "train.lr"], "train.lr"),
    ("run_fold:unknown config", ["run_fold.py", "--workdir", "{wd}", "--config", "nosuch_exp", "--fold", "0"],
     "nosuch_exp"),
    ("run_fold:unknown preset", ["run_fold.py", "--workdir", "{wd}", "--preset", "nosuch_preset", "--fold", "0"],
     "nosuch_preset"),
    # fold ids
    ("run_fold:fold 7", RF[:-1] + ["7", "folds.k=3"], "--fold 7"),
    ("run_fold:fold abc", RF[:-1] + ["abc", "folds.k=3"], "--fold"),
    ("run_fold:fold -1", RF[:-1] + ["-1", "folds.k=3"], "--fold -1"),
    ("run_fold:fold file of k=4", RF + ["folds.k=4"], "fold file not found"),
    ("stack:fold 9", ST + ["--fold", "9"], "fold 9"),
    # data files: missing, empty, header only, a folder, the data folder a file or absent
    ("run_fold:X_train a folder", RF + ["folds.k=3", "--data-dir", "{d:xdir}"], "is a directory"),
    ("run_fold:X_train empty", RF + ["folds.k=3", "--data-dir", "{d:empty}"], "file is empty"),
    ("run_fold:X_train header only", RF + ["folds.k=3", "--data-dir", "{d:header}"], "header only"),
    ("run_fold:Y_train missing", RF + ["folds.k=3", "--data-dir", "{d:noy}"], "file not found"),
    ("run_fold:data dir missing", RF + ["folds.k=3", "--data-dir", "{missing}"], "no such data directory"),
    ("run_fold:data dir a file", RF + ["folds.k=3", "--data-dir", "{file}"], "is a file"),
    ("run_all:X_train a folder", RA + ["--data-dir", "{d:xdir}"], "is a directory"),
    ("submit:data dir missing", SU + ["--data-dir", "{missing}"], "no such data directory"),
    # workdir: a file, read-only
    ("run_fold:workdir a file", ["run_fold.py", "--workdir", "{file}", "--config", "tfidf_svm_text", "--fold", "0"],
     "is a file, not a folder"),
    ("run_fold:workdir read-only", ["run_fold.py", "--workdir", "{ro}", "--config", "tfidf_svm_text",
                                    "--fold", "0", "folds.k=3", "--force"], "cannot write"),
    ("stack:workdir read-only", [*ST[:2], "{ro}", *ST[3:]], "cannot write"),
    ("tune:workdir a file", [*TU[:2], "{file}", *TU[3:], *TU_OV], "is a file, not a folder"),
    ("submit:workdir read-only", ["submit.py", "--workdir", "{ro}", "--exp", "stack_cpu_text_lgbm", "--force"],
     "cannot write"),
    ("leaderboard:workdir a file", ["leaderboard.py", "--workdir", "{file}"], "is a file, not a folder"),
    ("leaderboard:workdir read-only", ["leaderboard.py", "--workdir", "{ro}"], "cannot write"),
    ("run_all:workdir a file", [*RA[:2], "{file}", *RA[3:]], "is a file, not a folder"),
    ("run_all:workdir read-only", [*RA[:2], "{ro}", *RA[3:], "--force"], "cannot write"),
    ("make_folds:workdir read-only", ["make_folds.py", "--workdir", "{ro}", "--k", "3", "--force"], "cannot write"),
    # stack / fuse / tune configs
    ("stack:num_leaves=abc", ST + ["lgbm.num_leaves=abc"], "lgbm.num_leaves"),
    ("stack:unknown input", ["stack.py", "--workdir", "{wd}", "--config", "stack_cpu_text_lgbm", "folds.k=3",
                             "stack.inputs=[nosuch_exp]"], "nosuch_exp"),
    ("stack:unknown config", ["stack.py", "--workdir", "{wd}", "--config", "nosuch_stack"], "nosuch_stack"),
    ("fuse:epochs=abc", ["fuse.py", "--workdir", "{wd}", "--config", "fusion_late_weighted", "train.epochs=abc"],
     "train.epochs"),
    ("tune:learning_rate=-0.1", TU + TU_OV + ["lgbm.learning_rate=-0.1"], "lgbm.learning_rate"),
    ("tune:trials -1", TU[:-1] + ["-1"] + TU_OV, "--trials"),
    ("tune:bad storage", TU + ["--storage", "notaurl"] + TU_OV, "--storage"),
    # submit: unknown experiment, bad format
    ("submit:unknown experiment", ["submit.py", "--workdir", "{wd}", "--exp", "nosuch_exp"], "nosuch_exp"),
    ("submit:format xml", SU + ["--format", "xml"], "--format"),
    # run_all: presets and options
    ("run_all:unknown preset", [*RA[:4], "nosuch_preset"], "nosuch_preset"),
    ("run_all:preset unknown key", [*RA[:4], "{preset:typo}"], "experimets"),
    ("run_all:preset unknown stack", [*RA[:4], "{preset:stack}"], "nosuch_stack"),
    ("run_all:preset bad override", [*RA[:4], "{preset:override}"], "tfidf.C"),
    ("run_all:format xml", RA + ["--format", "xml"], "--format"),
    ("run_all:trials -1", RA + ["--trials", "-1"], "--trials"),
    ("make_folds:k=1", ["make_folds.py", "--workdir", "{wd}", "--k", "1", "--force"], "k must be >= 2"),
    ("make_folds:k=abc", ["make_folds.py", "--workdir", "{wd}", "--k", "abc"], "--k"),
    # predict: bundle, input, options
    ("predict:no bundle", PR, "bundle"),
    ("predict:batch rows 0", PR + ["--batch-rows", "0"], "--batch-rows"),
    ("predict:input a folder", ["predict.py", "--bundle", "{missing}", "--input", "{wd}/data", "--out", "{missing}.csv"],
     "bundle"),
]


def _read_only(path: Path) -> None:
    """Make a tree read-only for this process: immutable as root (whom permissions do not stop),
    else without write permission."""
    if os.geteuid() == 0:
        r = subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("running as root without chattr: cannot make a folder read-only")
    else:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode & 0o555)


def _writable_again(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
    else:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def _places(finished, root: Path) -> dict:
    """The placeholders' values: broken data folders, a read-only copy, bad presets."""
    import shutil
    preset, wd = finished
    data = wd / "data" / "demo"
    places = {"wd": str(wd), "preset": str(preset), "file": str(root / "plain_file"), "missing": str(root / "nope")}
    (root / "plain_file").write_text("not a folder\n")

    def broken(kind, change):
        d = root / f"data_{kind}"
        d.mkdir()
        for f in ("X_train_update.csv", "Y_train_CVw08PX.csv", "X_test_update.csv"):
            shutil.copy2(data / f, d / f)
        change(d)
        places[f"d:{kind}"] = str(d)
    x = "X_train_update.csv"
    broken("xdir", lambda d: ((d / x).unlink(), (d / x).mkdir()))
    broken("empty", lambda d: (d / x).write_text(""))
    broken("header", lambda d: (d / x).write_text((d / x).read_text().splitlines()[0] + "\n"))
    broken("noy", lambda d: (d / "Y_train_CVw08PX.csv").unlink())
    text = preset.read_text()
    for kind, bad in (("typo", text.replace("experiments:", "experimets:")),
                      ("stack", text.replace("stack: [stack_cpu_text_logreg,", "stack: [nosuch_stack,")),
                      ("override", text.replace("all: {tfidf.max_features: 3000}", "all: {tfidf.C: abc}"))):
        assert bad != text
        (root / f"preset_{kind}.yaml").write_text(bad)
        places[f"preset:{kind}"] = str(root / f"preset_{kind}.yaml")
    ro = root / "ro"
    shutil.copytree(wd, ro, symlinks=True)
    _read_only(ro)
    places["ro"] = str(ro)
    return places


def _run_cases(cases, places: dict) -> dict:
    """Run each (case id, argv, word) of ``cases``, four at a time, with ``{name}`` in its arguments
    replaced by ``places[name]`` (longest names first); {case id: CompletedProcess}."""
    from concurrent.futures import ThreadPoolExecutor

    def fill(a: str) -> str:
        for k, v in sorted(places.items(), key=lambda kv: -len(kv[0])):
            a = a.replace("{" + k + "}", v)
        return a

    def one(case):
        cid, argv, _ = case
        cmd = [sys.executable, str(REPO / "src" / argv[0]), *map(fill, argv[1:])]
        return cid, subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, cases))


@pytest.fixture(scope="module")
def matrix(finished, tmp_path_factory):
    """Run every case once (in parallel); {case id: CompletedProcess}, checked by the tests below."""
    root = tmp_path_factory.mktemp("matrix")
    places = _places(finished, root)
    wd = finished[1]
    before, before_ro = snapshot(wd), snapshot(Path(places["ro"]))

    try:
        results = _run_cases(MATRIX, places)
        changed = sorted(k for k in set(before) | set(snapshot(wd)) if before.get(k) != snapshot(wd).get(k))
        changed_ro = snapshot(Path(places["ro"])) != before_ro
    finally:
        _writable_again(Path(places["ro"]))
    return results, changed, changed_ro


@pytest.mark.parametrize("cid,argv,word", MATRIX, ids=[c[0] for c in MATRIX])
def test_bad_input_is_one_line_error(matrix, cid, argv, word):
    results, _, _ = matrix
    assert_one_line_error(results[cid], word)


def test_bad_inputs_left_the_finished_workdir_untouched(matrix):
    _, changed, changed_ro = matrix
    assert changed == [], f"files changed by the bad-input cases: {changed[:10]}"
    assert not changed_ro


# ------------------------------------------------- the bundle commands: predict, export, serve, validate
# Malformed files and paths given to the four commands that read what users bring (a bundle, products,
# a submission, an API key): exit 2, one error line naming the problem, no traceback. A bundle is
# exported once from the finished tiny run; broken copies of it, of its inputs and of the workdir are
# the cases' files. (A missing, changed or added bundle file is also checked in-process in
# test_safe_bundle.py; a bundle folder that is not one, and an input without titles, in test_bundle.py.)
#   placeholders: as above, plus {bundle} the good bundle, {b:<kind>} a broken copy, {x:<kind>} a bad
#   products file, {s:<kind>} a bad submission, {w:<kind>} a broken workdir copy, {k:<kind>} a bad key
#   file, {dir} an empty folder, {busy} a port another socket listens on
PB = ["predict.py", "--bundle", "{bundle}", "--out", "{missing}.csv", "--no-progress", "--input"]
XT = "{wd}/data/demo/X_test_update.csv"
VS = ["validate_submission.py", "--workdir", "{wd}"]
EX = ["export.py", "--workdir", "{wd}", "--preset", "{preset}", "--out"]
SV = ["serve.py", "--port", "0", "--bundle"]
BUNDLE_MATRIX = [
    ("validate:not UTF-8", VS + ["{s:latin1}"], "not UTF-8"),
    ("validate:NUL bytes", VS + ["{s:nul}"], "NUL bytes"),
    ("validate:a folder", VS + ["{dir}"], "is a directory"),
    ("predict:input not UTF-8", PB + ["{x:latin1}"], "cannot parse"),
    ("predict:input binary", PB + ["{x:binary}"], "cannot parse"),
    ("predict:input bad JSON lines", PB + ["{x:jsonl}"], "cannot parse"),
    ("predict:input a folder", PB + ["{dir}"], "Is a directory"),
    ("predict:images missing", PB + [XT, "--images", "{missing}"], "--images"),
    ("predict:out a folder", ["predict.py", "--bundle", "{bundle}", "--input", XT, "--out", "{dir}"], "--out"),
    ("predict:bundle file changed", [*PB[:2], "{b:changed}", *PB[3:], XT], "changed since export"),
    ("predict:bundle planted pickle", [*PB[:2], "{b:pickle}", *PB[3:], XT], "not a skops file"),
    ("predict:manifest not JSON", [*PB[:2], "{b:junk}", *PB[3:], XT], "corrupt JSON"),
    ("predict:manifest a list", [*PB[:2], "{b:list}", *PB[3:], XT], "bundle format None"),
    ("predict:manifest path escapes", [*PB[:2], "{b:escape}", *PB[3:], XT], "not pinned"),
    ("export:out a file", EX + ["{file}"], "is a file"),
    ("export:out under a file", EX + ["{file}/bundle"], "Not a directory"),
    ("export:submitted.json corrupt", ["export.py", "--workdir", "{w:badsub}", "--preset", "{preset}", "--out",
                                       "{missing}"], "submitted.json"),
    ("export:fold model truncated", ["export.py", "--workdir", "{w:trunc}", "--preset", "{preset}", "--out",
                                     "{missing}"], "fold0"),
    ("serve:bundle file changed", SV + ["{b:changed}"], "changed since export"),
    ("serve:key file missing", SV + ["{bundle}", "--api-key-file", "{missing}"], "file not found"),
    ("serve:key file empty", SV + ["{bundle}", "--api-key-file", "{k:empty}"], "one non-empty line"),
    ("serve:port busy", ["serve.py", "--bundle", "{bundle}", "--port", "{busy}"], "cannot listen"),
]


def _bundle_places(finished, root: Path) -> dict:
    """Export the finished run once, then the broken copies and files the cases read."""
    import pickle
    import shutil
    preset, wd = finished
    places = {"wd": str(wd), "preset": str(preset), "file": str(root / "plain_file"), "missing": str(root / "nope"),
              "dir": str(root / "empty_dir")}
    (root / "plain_file").write_text("not a folder\n")
    (root / "empty_dir").mkdir()
    good = root / "bundle"
    r = subprocess.run([sys.executable, str(REPO / "src" / "export.py"), "--workdir", str(wd), "--preset", str(preset),
                        "--out", str(good)], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    places["bundle"] = str(good)
    m = json.loads((good / "manifest.json").read_text())
    stack = m["submitted"]
    model = f"members/{stack}/{m['members'][stack]['files'][0]}"
    skops_member = next(n for n, e in m["members"].items() if e["files"][0].endswith(".skops"))
    skops_rel = f"members/{skops_member}/{m['members'][skops_member]['files'][0]}"

    def broken(kind, change):
        d = root / f"bundle_{kind}"
        shutil.copytree(good, d)
        change(d)
        places[f"b:{kind}"] = str(d)

    def rehash(d, rel):
        from rakuten.safe_io import sha256
        mm = json.loads((d / "manifest.json").read_text())
        mm["sha256"][rel] = sha256(d / rel)
        (d / "manifest.json").write_text(json.dumps(mm))

    def manifest(d, fn):
        (d / "manifest.json").write_text(json.dumps(fn(json.loads((d / "manifest.json").read_text()))))

    def escape(mm):
        mm["members"][stack]["files"][0] = "../../x.skops"
        return mm
    broken("changed", lambda d: (d / model).write_bytes((d / model).read_bytes() + b" "))
    broken("pickle", lambda d: ((d / skops_rel).write_bytes(pickle.dumps({"a": 1})), rehash(d, skops_rel)))
    broken("junk", lambda d: (d / "manifest.json").write_text("{not json"))
    broken("list", lambda d: (d / "manifest.json").write_text("[1, 2]"))
    broken("escape", lambda d: manifest(d, escape))
    x = root / "x"
    x.mkdir()
    head = (wd / "data" / "demo" / "X_test_update.csv").read_text().splitlines()[:3]
    (x / "latin1.csv").write_bytes(("\n".join(head) + "\n,Télé à écran plat,,1,2\n").encode("latin-1"))
    (x / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (x / "empty.csv").write_text("")
    (x / "bad.jsonl").write_text('{"title": "ok"}\n{"title": \n')
    places.update({"x:latin1": str(x / "latin1.csv"), "x:binary": str(x / "binary.csv"),
                   "x:empty": str(x / "empty.csv"), "x:jsonl": str(x / "bad.jsonl")})
    (x / "sub_latin1.csv").write_bytes(",prdtypecode\n0,10\n# Télé\n".encode("latin-1"))
    (x / "sub_nul.csv").write_bytes(b",prdtypecode\n0,10\x00\x00\n")
    places.update({"s:latin1": str(x / "sub_latin1.csv"), "s:nul": str(x / "sub_nul.csv")})
    (x / "key_empty").write_text("\n")
    places["k:empty"] = str(x / "key_empty")
    for kind in ("badsub", "trunc"):
        w = root / f"wd_{kind}"
        shutil.copytree(wd, w, symlinks=True)
        places[f"w:{kind}"] = str(w)
    (root / "wd_badsub" / "submissions" / "submitted.json").write_text('{"bias": true}')
    f = root / "wd_trunc" / "oof" / stack / "models" / m["members"][stack]["files"][0]
    f.write_bytes(f.read_bytes()[:40])
    return places


@pytest.fixture(scope="module")
def bundle_matrix(finished, tmp_path_factory):
    """Run every BUNDLE_MATRIX case once (in parallel); ({case id: CompletedProcess}, bundle digests
    before, after)."""
    import socket

    from rakuten.safe_io import file_digests
    root = tmp_path_factory.mktemp("bundle_matrix")
    places = _bundle_places(finished, root)
    busy = socket.create_server(("127.0.0.1", 0))
    places["busy"] = str(busy.getsockname()[1])
    before = file_digests(places["bundle"]), snapshot(finished[1])

    try:
        results = _run_cases(BUNDLE_MATRIX, places)
    finally:
        busy.close()
    return results, before, (file_digests(places["bundle"]), snapshot(finished[1]))


@pytest.mark.slow    # 22 script runs, four at a time, on the finished tiny run and its bundle
@pytest.mark.parametrize("cid,argv,word", BUNDLE_MATRIX, ids=[c[0] for c in BUNDLE_MATRIX])
def test_bundle_command_bad_input_is_one_line_error(bundle_matrix, cid, argv, word):
    results, _, _ = bundle_matrix
    assert_one_line_error(results[cid], word)


@pytest.mark.slow
def test_bundle_command_bad_inputs_changed_nothing(bundle_matrix):
    _, before, after = bundle_matrix
    assert before == after
