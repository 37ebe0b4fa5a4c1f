"""Under CI=true a skip for a dependency CI installs is a failure (tests/conftest.py); skips for what
CI does not provide stay skips. Two pytest subprocesses (with and without CI) over four small test files."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")
CASES = {
    "import": "import pytest\ndef test_x():\n    pytest.importorskip('no_such_package_rakuten13')\n",
    "module_import": "import pytest\npytest.importorskip('no_such_package_rakuten13')\ndef test_x():\n    pass\n",
    "offline": "import pytest\n@pytest.mark.skipif(True, reason='needs requirements-offline.txt (e5)')\n"
               "def test_x():\n    pass\n",
    "sample": "import pytest\n@pytest.mark.skipif(True, reason='real sample not present')\ndef test_x():\n    pass\n",
}


def _outcomes(tmp_path: Path, ci: bool) -> dict[str, str]:
    """{case: "passed" | "failed" | "skipped"} of one pytest run over every case file."""
    d = tmp_path / f"ci_{ci}"
    d.mkdir()
    (d / "conftest.py").write_text(CONFTEST.read_text())
    for case, text in CASES.items():
        (d / f"test_{case}.py").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--continue-on-collection-errors", "--junitxml", str(d / "r.xml"),
                        str(d)], capture_output=True, text=True, cwd=d, env=env, timeout=120)
    assert r.returncode in (0, 1, 2), r.stdout[-2000:] + r.stderr[-2000:]
    out = {}
    for tc in ET.parse(d / "r.xml").getroot().iter("testcase"):
        case = (tc.get("classname") or tc.get("name")).split(".")[-1].removeprefix("test_")
        kinds = {c.tag for c in tc}
        out[case] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return out


def test_dependency_skips_fail_under_ci_and_others_stay_skips(tmp_path):
    assert _outcomes(tmp_path, ci=False) == dict.fromkeys(CASES, "skipped")
    assert _outcomes(tmp_path, ci=True) == {"import": "failed", "module_import": "failed", "offline": "failed",
                                            "sample": "skipped"}
