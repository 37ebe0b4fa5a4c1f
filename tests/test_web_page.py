"""The web page at ``/``, driven in a real headless browser (Debian's chromium + chromedriver through
selenium) against the service on a loopback port: a title, a description and an image (file chooser,
then drag and drop) give the top-3 that ``predict.py`` gives for that product, with names and the
inputs used; an uploaded CSV downloads the very file ``predict.py`` writes; bad requests show the
service's one-line message on the page, never a stack trace."""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
selenium = pytest.importorskip("selenium")   # requirements.txt; chromium + chromedriver: apt (.ci/run)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from test_bundle import ENV, REPO  # noqa: E402
from test_serve import free_port  # noqa: E402

pytestmark = pytest.mark.slow    # reads the session fixture bundle_run (a tiny run and its export)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,900"]
WAIT_S = 60


@pytest.fixture(scope="module")
def site(bundle_run):
    """The service (uvicorn, in a thread of this process) over conftest's tiny bundle, on a free
    loopback port. Yields (base url, workdir, bundle, root)."""
    from rakuten.serve import create_app
    root, wd, bundle, _, _ = bundle_run
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(bundle), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the service did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", wd, bundle, root
    server.should_exit = True
    thread.join(timeout=20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        msg = "needs chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(f"CI=true: {msg}; .ci/run installs them")
        pytest.skip(msg)
    os.environ.setdefault("SE_OFFLINE", "true")   # selenium's driver manager never goes online
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    downloads = tmp_path_factory.mktemp("downloads")
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def _product(wd: Path) -> tuple[pd.DataFrame, Path]:
    """The first demo test product with a description and an image: (its one-row X frame, its image)."""
    x = pd.read_csv(wd / "data" / "demo" / "X_test_update.csv", index_col=0)
    for i, r in x.iterrows():
        img = wd / "data" / "demo" / "image_test" / f"image_{r['imageid']}_product_{r['productid']}.jpg"
        if isinstance(r["description"], str) and img.exists():
            return x.loc[[i]], img
    raise AssertionError("no demo test product with a description and an image")


@pytest.fixture(scope="module")
def reference(site):
    """``predict.py``'s answers, from two runs side by side: for the form's product (a JSON lines file:
    with its description and image, then title only) and for the CSV the page uploads (12 products).
    Returns (the form's product, its image, its two predicted rows, the CSV's path, predict.py's CSV)."""
    _, wd, bundle, root = site
    x, img = _product(wd)
    r = x.iloc[0]
    (root / "page_one.jsonl").write_text(
        pd.DataFrame([{"title": r["designation"], "description": r["description"], "image_path": str(img)},
                      {"title": r["designation"]}]).to_json(orient="records", lines=True))
    pd.read_csv(wd / "data" / "demo" / "X_test_update.csv", index_col=0).head(12).to_csv(root / "page_csv.csv")
    procs = [subprocess.Popen([sys.executable, str(REPO / "src" / "predict.py"), "--bundle", str(bundle),
                               "--input", str(root / f"{n}.{ext}"), "--out", str(root / f"{n}_pred.csv"),
                               "--no-progress"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n, ext in (("page_one", "jsonl"), ("page_csv", "csv"))]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    one = pd.read_csv(root / "page_one_pred.csv", index_col=0)
    return r, img, one, root / "page_csv.csv", (root / "page_csv_pred.csv").read_text()


def _wait_shown(driver, *ids):
    WebDriverWait(driver, WAIT_S).until(lambda d: any(d.find_element(By.ID, i).is_displayed() for i in ids))


def _predict_on_page(driver, base, title, description, image: Path | None = None, drop: Path | None = None):
    driver.get(base + "/")
    driver.find_element(By.ID, "title").send_keys(title)
    if description:
        driver.find_element(By.ID, "description").send_keys(description)
    if image is not None:
        driver.find_element(By.ID, "image").send_keys(str(image))
    if drop is not None:   # a file dropped on the zone: the drop event a user's drag ends with
        driver.execute_script("""
            const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], arguments[1], {type: "image/jpeg"}));
            document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        """, base64.b64encode(drop.read_bytes()).decode(), drop.name)
        assert driver.find_element(By.ID, "image-preview").is_displayed()
    driver.find_element(By.ID, "predict-button").click()
    _wait_shown(driver, "result", "error")
    assert not driver.find_element(By.ID, "error").is_displayed(), driver.find_element(By.ID, "error").text
    items = driver.find_elements(By.CSS_SELECTOR, "#top3 li")
    return ([(int(li.get_attribute("data-code")), float(li.get_attribute("data-prob")), li.text) for li in items],
            driver.find_element(By.ID, "inputs-used").text, driver.find_element(By.ID, "inputs-missing").text)


def test_one_product_with_an_image_equals_predict_py(site, browser, reference):
    from rakuten.labels import code_label
    base, _, _, root = site
    r, img, one, _, _ = reference
    ref = one.iloc[0]
    assert ref["missing_inputs"] != ref["missing_inputs"]    # NaN: predict.py had all three inputs
    for how in ({"image": img}, {"drop": img}):    # the file chooser, then drag and drop
        top, used, missing = _predict_on_page(browser, base, r["designation"], r["description"], **how)
        assert [c for c, _, _ in top] == [ref[f"top{j}_code"] for j in (1, 2, 3)], how
        assert [p for _, p, _ in top] == pytest.approx([ref[f"top{j}_prob"] for j in (1, 2, 3)], abs=1e-6)
        assert all(code_label(c) in text for c, _, text in top)           # "2583 - Piscine et accessoires"
        assert f"{100 * top[0][1]:.1f} %" in top[0][2]
        assert used == "title, description, image" and missing == ""
    browser.save_screenshot(str(root / "web_page.png"))
    assert (root / "web_page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_title_only_says_which_inputs_were_used(site, browser, reference):
    base, _, _, _ = site
    r, img, one, _, _ = reference
    ref = one.iloc[1]
    assert ref["missing_inputs"] == "description,image"
    top, used, missing = _predict_on_page(browser, base, r["designation"], "")
    assert [c for c, _, _ in top] == [ref[f"top{j}_code"] for j in (1, 2, 3)]
    assert [p for _, p, _ in top] == pytest.approx([ref[f"top{j}_prob"] for j in (1, 2, 3)], abs=1e-6)
    assert used == "title" and missing == "(not given: description, image)"   # .text trims the space
    # removing a chosen image: the product goes without it
    browser.get(base + "/")
    browser.find_element(By.ID, "image").send_keys(str(img))
    browser.find_element(By.ID, "image-clear").click()
    assert not browser.find_element(By.ID, "image-preview").is_displayed()


def test_csv_upload_downloads_predict_py_s_file(site, browser, reference):
    base, _, _, root = site
    _, _, _, csv_in, want = reference
    browser.get(base + "/")
    browser.find_element(By.ID, "csv-file").send_keys(str(csv_in))
    browser.find_element(By.ID, "csv-button").click()
    _wait_shown(browser, "csv-result", "csv-error")
    assert not browser.find_element(By.ID, "csv-error").is_displayed(), browser.find_element(By.ID, "csv-error").text
    assert "12 products" in browser.find_element(By.ID, "csv-count").text
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#csv-preview tbody tr:first-child td")]
    first = pd.read_csv(root / "page_csv_pred.csv", index_col=0).iloc[0]
    assert cells[2] == first["category"] and cells[2].startswith(f"{first['prdtypecode']} - ")
    browser.find_element(By.ID, "csv-download").click()
    got = browser.downloads / "page_csv_predictions.csv"
    WebDriverWait(browser, WAIT_S).until(lambda _: got.exists() and got.stat().st_size > 0)
    assert got.read_text() == want


@pytest.mark.parametrize("case,words", [
    ("empty title", "title is missing or empty"),
    ("not an image", "image bytes are not a readable image"),
    ("bad csv", "no title column"),
    ("no csv", "Choose a file of products first"),
])
def test_bad_requests_show_a_readable_message(site, browser, case, words):
    base, _, _, _ = site
    browser.get(base + "/")
    junk = Path(tempfile.mkdtemp()) / "notes.txt"
    junk.write_text("just some words\nand a second line\n")
    if case in ("empty title", "not an image"):
        browser.find_element(By.ID, "title").send_keys("   " if case == "empty title" else "Lot de stylos")
        if case == "not an image":
            browser.find_element(By.ID, "image").send_keys(str(junk))
        browser.find_element(By.ID, "predict-button").click()
        box = "error"
    else:
        if case == "bad csv":
            browser.find_element(By.ID, "csv-file").send_keys(str(junk))
        browser.find_element(By.ID, "csv-button").click()
        box = "csv-error"
    _wait_shown(browser, box)
    text = browser.find_element(By.ID, box).text
    assert words in text and "\n" not in text and "Traceback" not in browser.page_source
    assert str(junk.parent) not in text      # the user's file is named, never a server-side path
