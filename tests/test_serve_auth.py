"""The service's API key: off by default; with a key, /predict needs ``Authorization: Bearer <key>``
(401 without it, 403 with a wrong one) while /health stays open; the key file's faults are one line."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from test_bundle import run  # noqa: E402

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def apps(bundle_run):
    from fastapi.testclient import TestClient

    from rakuten.bundle import Bundle
    from rakuten.serve import create_app
    _, _, bundle, _, _ = bundle_run
    b = Bundle(bundle)
    return TestClient(create_app(b)), TestClient(create_app(b, api_key=KEY))


@pytest.mark.slow    # reads the session fixture bundle_run (a tiny run and its export)
def test_off_by_default(apps):
    open_app, _ = apps
    assert open_app.post("/predict", json={"title": "Stylo bleu"}).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"Authorization": KEY}, 401),                        # not a bearer token
    ({"Authorization": "Basic " + KEY}, 401),
    ({"Authorization": "Bearer "}, 401),
    ({"Authorization": "Bearer wrong-key"}, 403),
    ({"Authorization": "Bearer " + KEY[:-1]}, 403),        # a prefix of the key
    ({"Authorization": "Bearer " + KEY + "x"}, 403),
    ({"Authorization": "Bearer " + KEY}, 200),
    ({"Authorization": "bearer " + KEY}, 200),             # the scheme is case-insensitive (RFC 7235)
])
def test_predict_needs_the_key(apps, headers, status):
    _, locked = apps
    r = locked.post("/predict", json={"title": "Stylo bleu"}, headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer" and "Authorization: Bearer" in r.json()["detail"]
    if status == 403:
        assert r.json()["detail"] == "wrong API key"
    assert locked.get("/health").status_code == 200     # open with or without a key


def test_key_sources(tmp_path, monkeypatch):
    from rakuten.errors import RakutenError
    from rakuten.serve import API_KEY_ENV, load_api_key

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert load_api_key(None) is None
    monkeypatch.setenv(API_KEY_ENV, " env-key ")
    assert load_api_key(None) == "env-key"
    f = tmp_path / "key"
    f.write_text("file-key\n")
    assert load_api_key(str(f)) == "file-key"            # the file wins over the environment
    for content, words in (("", "one non-empty line"), ("a\nb\n", "one non-empty line")):
        f.write_text(content)
        with pytest.raises(RakutenError, match=words):
            load_api_key(str(f))
    with pytest.raises(RakutenError, match="file not found"):
        load_api_key(str(tmp_path / "nope"))
    with pytest.raises(RakutenError, match="is a directory"):
        load_api_key(str(tmp_path))
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RakutenError, match="cannot read"):
        load_api_key(str(f))


def test_serve_py_bad_key_file_is_one_line(tmp_path):
    r = run("serve.py", "--bundle", tmp_path, "--api-key-file", tmp_path / "nope", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: --api-key-file {tmp_path / 'nope'}: file not found"]
