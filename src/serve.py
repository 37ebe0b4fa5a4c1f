"""Serve a model bundle over HTTP (FastAPI under uvicorn).

    python src/serve.py --bundle bundle/ [--host 127.0.0.1 --port 8000]

``POST /predict`` (JSON: one product or {"products": [...]}, each with title, optional description,
productid, imageid, image_base64; or a multipart form with an ``image`` file), ``GET /health``,
``GET /model`` (the bundle's manifest), OpenAPI docs at ``/docs``, and a web page at ``/`` to try the
model in a browser (one product with an optional image, or a CSV of products). See ``src/rakuten/serve.py``.

Authentication is off unless a key is given: ``--api-key-file FILE`` (one line) or the environment
variable RAKUTEN_API_KEY; then /predict needs ``Authorization: Bearer <key>`` (/health stays open).
SIGTERM or Ctrl-C: the requests in flight are answered, then the process exits 0.
"""
from __future__ import annotations

import argparse
import signal
import socket

from rakuten.cli import one_line_errors, setup_logging
from rakuten.errors import RakutenError


def _check_port(host: str, port: int) -> None:
    """One line now rather than uvicorn's log line and exit 1 when the address cannot be listened on."""
    if not 0 <= port < 65536:
        raise RakutenError(f"--port {port}: must be in 1..65535 (0: any free port)")
    try:
        socket.create_server((host, port), reuse_port=False).close()
    except socket.gaierror as e:
        raise RakutenError(f"--host {host}: unknown address ({e.strerror})") from None
    except OSError as e:
        raise RakutenError(f"--port {port}: cannot listen on {host} ({e.strerror})") from None


def _stop_quietly(signum, frame) -> None:
    """uvicorn re-raises the signal that stopped it once its graceful shutdown is over; this handler
    receives it, so a stop by SIGTERM/SIGINT ends with exit 0 rather than death by the signal."""


def main(argv=None) -> int:
    """Entry point: parse the arguments, load the bundle and serve it with uvicorn until SIGTERM or
    Ctrl-C; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle folder written by export.py (holds manifest.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--max-products", type=int, default=64, help="products per request, at most")
    p.add_argument("--max-image-bytes", type=int, default=5 * 2**20, help="size limit of one image")
    p.add_argument("--api-key-file", default=None,
                   help="require 'Authorization: Bearer <key>' on /predict, the key read from this file "
                        "(default: $RAKUTEN_API_KEY if set, else no authentication)")
    p.add_argument("--graceful-seconds", type=int, default=60,
                   help="on SIGTERM, how long the requests in flight may take to finish")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # heavy: uvicorn, fastapi and the bundle load only after the arguments are checked
        import uvicorn

        from rakuten.bundle import Bundle
        from rakuten.serve import create_app, load_api_key

        api_key = load_api_key(args.api_key_file)
        _check_port(args.host, args.port)
        bundle = Bundle(args.bundle)
        print(f"loaded {bundle.model_version} in {bundle.load_seconds:.2f} s; authentication "
              f"{'on (Bearer key)' if api_key else 'off'}", flush=True)
        app = create_app(bundle, max_products=args.max_products, max_image_bytes=args.max_image_bytes,
                         api_key=api_key)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop_quietly)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                    timeout_graceful_shutdown=args.graceful_seconds)
        print("stopped: the requests in flight were answered", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
