"""The HTTP service over a bundle: in-process (FastAPI TestClient) for every endpoint and every bad
request, and the real uvicorn server on a loopback port under concurrent requests, whose answers
must equal ``predict.py``'s for the same products."""
from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from test_bundle import ENV, REPO, run  # noqa: E402

pytestmark = pytest.mark.slow    # reads the session fixture bundle_run (a tiny run and its export)


@pytest.fixture(scope="module")
def served(bundle_run):
    root, wd, bundle, _, _ = bundle_run   # conftest.py's tiny run + export, shared with test_bundle.py
    return root, wd, bundle


@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    from rakuten.serve import create_app
    _, _, bundle = served
    return TestClient(create_app(bundle, max_products=8, max_image_bytes=50_000))


def _products(wd: Path, n: int = 6) -> list[dict]:
    """The first ``n`` demo test products as request objects (image inline as base64)."""
    x = pd.read_csv(wd / "data" / "demo" / "X_test_update.csv", index_col=0).head(n)
    out = []
    for _, r in x.iterrows():
        p = {"title": r["designation"], "productid": int(r["productid"]), "imageid": int(r["imageid"])}
        if isinstance(r["description"], str):
            p["description"] = r["description"]
        img = wd / "data" / "demo" / "image_test" / f"image_{r['imageid']}_product_{r['productid']}.jpg"
        if img.exists():
            p["image_base64"] = base64.b64encode(img.read_bytes()).decode()
        out.append(p)
    return out


def _predict_py(served, n: int) -> pd.DataFrame:
    root, wd, bundle = served
    x = pd.read_csv(wd / "data" / "demo" / "X_test_update.csv", index_col=0).head(n)
    inp = root / f"x_head{n}.csv"
    x.to_csv(inp)
    out = root / f"pred_head{n}.csv"
    run("predict.py", "--bundle", bundle, "--input", inp, "--images", wd / "data" / "demo" / "image_test",
        "--out", out, "--no-progress")
    return pd.read_csv(out, index_col=0)


def _same(rows: list[dict], ref: pd.DataFrame) -> None:
    assert [r["productid"] for r in rows] == ref["productid"].tolist()
    assert [r["prdtypecode"] for r in rows] == ref["prdtypecode"].tolist()
    for r, (_, e) in zip(rows, ref.iterrows()):
        assert abs(r["top1_prob"] - e["top1_prob"]) < 1e-5 and r["top2_code"] == e["top2_code"]
        assert r["missing_inputs"] == ("" if pd.isna(e["missing_inputs"]) else e["missing_inputs"])


def test_health_model_and_docs(client, served):
    _, _, bundle = served
    m = json.loads((bundle / "manifest.json").read_text())
    h = client.get("/health")
    assert h.status_code == 200 and h.json() == {"status": "ok", "model_version": m["model_version"]}
    assert client.get("/model").json()["submitted"] == m["submitted"]
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200


def test_predict_json_equals_predict_py(client, served):
    _, wd, _ = served
    products = _products(wd)
    r = client.post("/predict", json={"products": products})
    assert r.status_code == 200, r.text
    _same(r.json()["predictions"], _predict_py(served, len(products)))
    one = client.post("/predict", json=products[0])   # a single product object
    assert one.status_code == 200 and one.json()["predictions"][0]["prdtypecode"] == r.json()["predictions"][0]["prdtypecode"]


def test_predict_multipart_upload(client, served):
    _, wd, _ = served
    p = _products(wd, 1)[0]
    files = {"image": ("x.jpg", base64.b64decode(p["image_base64"]), "image/jpeg")} if "image_base64" in p else None
    data = {"title": p["title"], "productid": str(p["productid"]), "imageid": str(p["imageid"])}
    if "description" in p:
        data["description"] = p["description"]
    r = client.post("/predict", data=data, files=files)
    assert r.status_code == 200, r.text
    ref = client.post("/predict", json=p).json()["predictions"][0]
    assert r.json()["predictions"][0] == ref


def test_title_only_product_says_what_is_missing(client):
    r = client.post("/predict", json={"title": "Lot de 3 stylos bille bleus"})
    assert r.status_code == 200
    assert r.json()["predictions"][0]["missing_inputs"] == "description,image"


@pytest.mark.parametrize("body,status,words", [
    ({"description": "pas de titre"}, 422, "title is missing"),
    ({"title": "  "}, 422, "title is missing"),
    ({"title": "ok", "colour": "red"}, 422, "unknown field(s) colour"),
    ({"title": "ok", "image_base64": base64.b64encode(b"not an image at all").decode()}, 415, "not a readable image"),
    ({"title": "ok", "image_base64": "%%%"}, 422, "not valid base64"),
    ({"title": "ok", "image_base64": base64.b64encode(b"\xff" * 60_000).decode()}, 413, "over the"),
    ({"products": [{"title": "t"}] * 9}, 413, "over the limit of 8"),
    ({"products": []}, 422, "non-empty list"),
    ([1, 2], 422, "body must be"),
])
def test_bad_requests_get_one_line_4xx_and_the_server_keeps_serving(client, body, status, words):
    r = client.post("/predict", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail and "\n" not in detail
    assert client.post("/predict", json={"title": "Jeu PS4 neuf"}).status_code == 200


def test_bad_body_and_content_type(client):
    r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = client.post("/predict", content=b"title=x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/predict", data={"title": "x"}, files={"image": ("a.jpg", b"junk", "image/jpeg")})
    assert r.status_code == 415 and "not a readable image" in r.json()["detail"]
    r = client.post("/predict", data={"title": "x", "extra": "y"}, files={"image": ("a.jpg", b"junk", "image/jpeg")})
    assert r.status_code == 422 and "unknown form field(s) extra" in r.json()["detail"]


def free_port() -> int:
    """A free loopback port (test_load and test_web_page start their services on one too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, base: str, poll_s: float = 0.5, timeout_s: float = 120) -> None:
    """Until ``base``/health answers 200; fails with the server's output if it exits first, or after
    ``timeout_s``."""
    deadline = time.time() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.time() < deadline, f"server did not come up in {timeout_s:.0f} s"
        time.sleep(poll_s)


def test_real_server_under_concurrent_requests(served):
    _, wd, bundle = served
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "src" / "serve.py"), "--bundle", str(bundle),
                             "--port", str(port)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        products = _products(wd, 8)
        ref = _predict_py(served, 8)

        def one(i):
            with httpx.Client(timeout=60) as c:
                if i % 3 == 2:   # a bad request among the good ones
                    return i, c.post(f"{base}/predict", json={"title": ""})
                return i, c.post(f"{base}/predict", json={"products": products})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(24)))
        for i, r in answers:
            if i % 3 == 2:
                assert r.status_code == 422
            else:
                assert r.status_code == 200, r.text
                _same(r.json()["predictions"], ref)
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
