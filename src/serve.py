"""Serve a model bundle over HTTP (FastAPI under uvicorn).

    python src/serve.py --bundle bundle/ [--host 127.0.0.1 --port 8000]

``POST /predict`` (JSON: one product or {"products": [...]}, each with title, optional description,
productid, imageid, image_base64; or a multipart form with an ``image`` file), ``GET /health``,
``GET /model`` (the bundle's manifest), OpenAPI docs at ``/docs``, and a web page at ``/`` to try the
model in a browser (one product with an optional image, or a CSV of products). See ``src/rakuten/serve.py``.
"""
from __future__ import annotations

import argparse

from rakuten.cli import one_line_errors, setup_logging


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle folder written by export.py (holds manifest.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--max-products", type=int, default=64, help="products per request, at most")
    p.add_argument("--max-image-bytes", type=int, default=5 * 2**20, help="size limit of one image")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # heavy: uvicorn, fastapi and the bundle load only after the arguments are checked
        import uvicorn

        from rakuten.bundle import Bundle
        from rakuten.serve import create_app

        bundle = Bundle(args.bundle)
        print(f"loaded {bundle.model_version} in {bundle.load_seconds:.2f} s")
        app = create_app(bundle, max_products=args.max_products, max_image_bytes=args.max_image_bytes)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
