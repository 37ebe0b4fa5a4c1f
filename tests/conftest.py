import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))


@pytest.fixture(scope="session")
def bundle_run(tmp_path_factory):
    """One tiny run of test_bundle.PRESET and its export, for test_bundle.py and test_serve.py: the
    run is the slow part of both, and each test only adds new files under ``root``.
    Returns (root, workdir, bundle, preset file, export.py's stdout)."""
    from test_bundle import PRESET, run

    root = tmp_path_factory.mktemp("bundle")
    preset = root / "bundle_smoke.yaml"
    preset.write_text(PRESET)
    wd = root / "wd"
    run("run_all.py", "--preset", preset, "--workdir", wd, "--no-progress")
    out = run("export.py", "--preset", preset, "--workdir", wd, "--out", root / "bundle")
    return root, wd, root / "bundle", preset, out.stdout


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """(preset file, workdir) of one finished tiny ``run_all`` (test_lineage.TINY_PRESET, ~30 s):
    for test_lineage.py (which copies it before changing anything) and the bad-input matrix."""
    from test_lineage import TINY_PRESET, run

    root = tmp_path_factory.mktemp("finished")
    preset = root / "lineage_tiny.yaml"
    preset.write_text(TINY_PRESET)
    r = run("run_all.py", "--preset", preset, "--workdir", root / "wd", "--no-progress")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return preset, root / "wd"
