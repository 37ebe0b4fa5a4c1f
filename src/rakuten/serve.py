"""HTTP service over a model bundle: ``POST /predict``, ``GET /health``, ``GET /model`` (FastAPI), and
a web page at ``/`` (``static/``) with ``GET /categories`` and ``POST /predict_csv`` behind it.

``POST /predict`` takes JSON (one product, or ``{"products": [...]}``; a product is ``title``, optional
``description``, ``productid``, ``imageid`` and ``image_base64``) or a multipart form (``title``,
``description``, ``productid``, an ``image`` file: one product). Each answer row is what
``predict.py`` writes for that product. Bad requests get a 4xx whose ``detail`` is one line: a
missing title, unknown fields, bytes that are not an image, an image over the size limit, too many
products. Predictions run one request at a time (the bundle's models are shared, not thread-safe);
a request waits for the one before it.

Authentication is off by default. With an API key (``serve.py --api-key-file FILE`` or the
``RAKUTEN_API_KEY`` environment variable) every ``/predict`` request must carry
``Authorization: Bearer <key>``: none gets 401, a wrong key 403 (compared in constant time);
``/health`` stays open. The check is ``app.state.require_api_key``, a dependency any route can list.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import io
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pandas as pd
# module level, not inside create_app: FastAPI resolves the endpoints' annotations (strings under
# ``from __future__ import annotations``) in this module's namespace
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from rakuten.bundle import Bundle, predictions_frame, products_frame, read_products
from rakuten.data.challenge import DataError
from rakuten.errors import RakutenError
from rakuten.labels import CATEGORY_NAMES, code_label

MAX_PRODUCTS = 64
MAX_IMAGE_BYTES = 5 * 2**20
MAX_CSV_BYTES = 20 * 2**20       # a file of products uploaded from the page (POST /predict_csv)
CSV_BATCH_ROWS = 2048            # products per prediction batch, as predict.py's default --batch-rows
STATIC_DIR = Path(__file__).resolve().parent / "static"
FIELDS = {"title", "description", "productid", "imageid", "image_base64"}


class RequestError(Exception):
    """A request the service refuses: HTTP ``status``, a one-line ``detail`` and optional response
    ``headers``; the app answers it as JSON ``{"detail": ...}``."""
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


API_KEY_ENV = "RAKUTEN_API_KEY"


def load_api_key(key_file: str | None = None) -> str | None:
    """The service's API key: the content of ``key_file`` (one line) if given, else ``$RAKUTEN_API_KEY``,
    else None (no authentication). An unreadable or empty key file is a one-line error."""
    if key_file is not None:
        try:
            key = open(key_file, encoding="utf-8").read().strip()
        except FileNotFoundError:
            raise RakutenError(f"--api-key-file {key_file}: file not found") from None
        except IsADirectoryError:
            raise RakutenError(f"--api-key-file {key_file}: is a directory, not a file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise RakutenError(f"--api-key-file {key_file}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        if not key or "\n" in key:
            raise RakutenError(f"--api-key-file {key_file}: must hold one non-empty line (the key)")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    return key or None


def api_key_dependency(api_key: str | None):
    """A FastAPI dependency: with a key, the request needs ``Authorization: Bearer <key>`` (401 when
    missing or not a bearer token, 403 when wrong, compared with ``hmac.compare_digest``); without a
    key it lets everything through."""
    expected = None if api_key is None else api_key.encode("utf-8")

    def require_api_key(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestError(401, "authentication required: send the header Authorization: Bearer <key>",
                               {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.strip().encode("utf-8"), expected):
            raise RequestError(403, "wrong API key")
    return require_api_key


def _check_image(raw: bytes, where: str, max_bytes: int) -> bytes:
    if len(raw) > max_bytes:
        raise RequestError(413, f"{where}: image is {len(raw)} bytes, over the {max_bytes}-byte limit")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise RequestError(415, f"{where}: image bytes are not a readable image") from None
    return raw


def _product(p, i: int, max_bytes: int) -> dict:
    where = f"product {i}"
    if not isinstance(p, dict):
        raise RequestError(422, f"{where}: must be a JSON object")
    unknown = sorted(set(p) - FIELDS)
    if unknown:
        raise RequestError(422, f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(FIELDS))})")
    title = p.get("title")
    if not isinstance(title, str) or not title.strip():
        raise RequestError(422, f"{where}: title is missing or empty")
    desc = p.get("description")
    if desc is not None and not isinstance(desc, str):
        raise RequestError(422, f"{where}: description must be a string")
    for k in ("productid", "imageid"):
        if p.get(k) is not None and (not isinstance(p[k], int) or isinstance(p[k], bool)):
            raise RequestError(422, f"{where}: {k} must be an integer")
    image = None
    if p.get("image_base64") is not None:
        if not isinstance(p["image_base64"], str):
            raise RequestError(422, f"{where}: image_base64 must be a base64 string")
        if len(p["image_base64"]) > max_bytes * 4 // 3 + 8:
            raise RequestError(413, f"{where}: image is over the {max_bytes}-byte limit")
        try:
            raw = base64.b64decode(p["image_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(422, f"{where}: image_base64 is not valid base64") from None
        image = _check_image(raw, where, max_bytes)
    return {"title": title, "description": desc, "productid": p.get("productid"), "imageid": p.get("imageid"),
            "image": image}


class Predictor:
    """A bundle behind a lock; ``predict(products)`` -> list of answer rows (dicts)."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.lock = threading.Lock()

    def predict(self, products: list[dict]) -> list[dict]:
        """Predict checked request products (title, description, productid, imageid, image bytes or None)
        under the lock; returns one answer row per product, in order. Images pass through a temporary
        folder, removed afterwards; a missing productid or imageid is sent to the bundle as -1."""
        tmp = Path(tempfile.mkdtemp(prefix="rakuten_serve_"))
        try:
            paths = []
            for i, p in enumerate(products):
                if p["image"] is None:
                    paths.append("")
                    continue
                f = tmp / f"{i}.img"
                f.write_bytes(p["image"])
                paths.append(str(f))
            df = pd.DataFrame({"designation": [p["title"] for p in products],
                               "description": [p["description"] for p in products],
                               "productid": [-1 if p["productid"] is None else p["productid"] for p in products],
                               "imageid": [-1 if p["imageid"] is None else p["imageid"] for p in products],
                               "image_path": paths})
            frame = products_frame(df, None, "request")
            with self.lock:
                out = predictions_frame(self.bundle, frame, self.bundle.predict(frame))
                self.bundle.close()
            return out.reset_index(drop=True).to_dict(orient="records")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def create_app(bundle: Bundle | str | Path, max_products: int = MAX_PRODUCTS, max_image_bytes: int = MAX_IMAGE_BYTES,
               api_key: str | None = None):
    """The FastAPI app over ``bundle``; ``api_key``: require it on /predict (see the module docstring)."""
    if not isinstance(bundle, Bundle):
        bundle = Bundle(bundle)
    predictor = Predictor(bundle)
    app = FastAPI(title="Rakuten product type classifier", version=bundle.model_version,
                  description="Predicts the prdtypecode of products from a model bundle (export.py).")
    app.state.predictor = predictor
    require_api_key = api_key_dependency(api_key)
    app.state.require_api_key = require_api_key

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, e: RequestError):
        return JSONResponse(status_code=e.status, content={"detail": e.detail}, headers=e.headers)

    add_page_routes(app, predictor, require_api_key=require_api_key)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model_version": bundle.model_version}

    @app.get("/model")
    def model() -> dict:
        return bundle.manifest

    @app.post("/predict", dependencies=[Depends(require_api_key)])
    async def predict(request: Request) -> dict:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            products = await _form_products(request, max_image_bytes)
        elif ctype.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                raise RequestError(400, "request body is not valid JSON") from None
            products = _json_products(body, max_products, max_image_bytes)
        else:
            raise RequestError(415, f"content type {ctype or 'none'!r}: send application/json or multipart/form-data")
        rows = await run_in_threadpool(predictor.predict, products)
        return {"model_version": bundle.model_version, "predictions": rows}

    return app


def _json_products(body, max_products: int, max_bytes: int) -> list[dict]:
    if isinstance(body, dict) and "products" in body:
        extra = sorted(set(body) - {"products"})
        if extra:
            raise RequestError(422, f"unknown field(s) {', '.join(extra)} beside products")
        items = body["products"]
        if not isinstance(items, list) or not items:
            raise RequestError(422, "products must be a non-empty list")
    elif isinstance(body, dict):
        items = [body]
    else:
        raise RequestError(422, "body must be a product object or {\"products\": [...]}")
    if len(items) > max_products:
        raise RequestError(413, f"{len(items)} products in one request, over the limit of {max_products}")
    return [_product(p, i, max_bytes) for i, p in enumerate(items)]


async def _form_products(request, max_bytes: int) -> list[dict]:
    form = await request.form()
    allowed = {"title", "description", "productid", "imageid", "image"}
    unknown = sorted(set(form.keys()) - allowed)
    if unknown:
        raise RequestError(422, f"unknown form field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    p: dict = {}
    for k in ("title", "description"):
        if form.get(k) is not None:
            p[k] = str(form.get(k))
    for k in ("productid", "imageid"):
        if form.get(k) is not None:
            try:
                p[k] = int(str(form.get(k)))
            except ValueError:
                raise RequestError(422, f"product 0: {k} must be an integer") from None
    product = _product(p, 0, max_bytes)
    up = form.get("image")
    if up is not None and hasattr(up, "read"):
        raw = await up.read(max_bytes + 1)
        product["image"] = _check_image(raw, "product 0", max_bytes)
    return [product]


# ------------------------------------------------------------------------------------------ web page
def add_page_routes(app: FastAPI, predictor: Predictor, max_csv_bytes: int = MAX_CSV_BYTES,
                    require_api_key=None) -> None:
    """The page at ``/`` (plain HTML, CSS and a little JavaScript from ``static/``, no build step) and
    the two endpoints it uses besides ``/predict``: ``GET /categories`` (code -> names) and
    ``POST /predict_csv`` (a CSV of products in, the CSV that ``predict.py`` writes for it out).
    ``require_api_key``: the dependency that guards ``/predict``, guarding ``/predict_csv`` too (the
    page itself and ``/categories`` stay open, like ``/health``)."""
    guard = [] if require_api_key is None else [Depends(require_api_key)]
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/categories")
    def categories() -> list[dict]:
        """The 27 product type codes with their French and English names and ``code - name`` label."""
        return [{"code": c, "name": fr, "name_en": en, "label": code_label(c)}
                for c, (fr, en) in sorted(CATEGORY_NAMES.items())]

    @app.post("/predict_csv", dependencies=guard)
    async def predict_csv(request: Request) -> Response:
        """A multipart form with one ``file``: products in the challenge's X format (CSV
        ``,designation,description,productid,imageid``; SIGIR TSV or JSON lines by their extension).
        Answers the CSV ``predict.py`` writes for that file (text and description only: images are
        not uploaded with a CSV)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError(415, "send the products file as a multipart form field named file")
        form = await request.form()
        unknown = sorted(set(form.keys()) - {"file"})
        if unknown:
            raise RequestError(422, f"unknown form field(s) {', '.join(unknown)} (allowed: file)")
        up = form.get("file")
        if up is None or not hasattr(up, "read"):
            raise RequestError(422, "no file: choose a CSV of products")
        raw = await up.read(max_csv_bytes + 1)
        if len(raw) > max_csv_bytes:
            raise RequestError(413, f"{up.filename}: over the {max_csv_bytes}-byte limit")
        if not raw.strip():
            raise RequestError(422, f"{up.filename or 'file'}: the file is empty")
        text = await run_in_threadpool(_predict_file, predictor, raw, up.filename or "products.csv")
        name = Path(up.filename or "products").stem + "_predictions.csv"
        return Response(text, media_type="text/csv",
                        headers={"content-disposition": f'attachment; filename="{name}"'})


def _predict_file(predictor: Predictor, raw: bytes, filename: str) -> str:
    """The uploaded products file -> predict.py's CSV for it (read by the same reader, in batches)."""
    suffix = Path(filename).suffix.lower()
    suffix = suffix if suffix in (".csv", ".tsv", ".jsonl", ".json") else ".csv"
    tmp = Path(tempfile.mkdtemp(prefix="rakuten_page_"))
    try:
        path = tmp / f"upload{suffix}"
        path.write_bytes(raw)
        try:
            products = read_products(path, None)
        except (DataError, RakutenError, ValueError, KeyError) as e:
            # one line naming the user's file, never the temporary path
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RequestError(422, msg.replace(str(path), filename)) from None
        if not len(products):
            raise RequestError(422, f"{filename}: no product rows")
        parts = []
        with predictor.lock:
            try:
                for s in range(0, len(products), CSV_BATCH_ROWS):
                    chunk = products.iloc[s:s + CSV_BATCH_ROWS].reset_index(drop=True)
                    parts.append(predictions_frame(predictor.bundle, chunk, predictor.bundle.predict(chunk)))
            finally:
                predictor.bundle.close()
        # the same call as predict.py's CSV writer: the page's download equals predict.py's file
        return pd.concat(parts).to_csv(index=True, index_label="", lineterminator="\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
