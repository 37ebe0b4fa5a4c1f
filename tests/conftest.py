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
