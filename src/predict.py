"""Predict new products with a model bundle (``export.py``).

    python src/predict.py --bundle bundle/ --input X_new.csv --images image_new/ --out predictions.csv

``--input``: the challenge's X format (CSV ``,designation,description,productid,imageid``; SIGIR
TSV) or JSON lines (``title``, optional ``description``, ``productid``, ``imageid``, ``image_path``).
Images are looked up as ``image_<imageid>_product_<productid>.jpg`` in ``--images``. A product
without an image or a description is predicted from what it has and says so in ``missing_inputs``.

Output (CSV, or JSON lines when ``--out`` ends in .jsonl), indexed like the input: productid,
prdtypecode, category (``code - name``, names from ``rakuten.labels``), label (class index), top-3
codes with their categories and probabilities, missing_inputs, model_version.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rakuten.cli import one_line_errors, quiet_progress, setup_logging
from rakuten.errors import RakutenError


def main(argv=None) -> int:
    """Entry point: parse the arguments, predict the products of ``--input`` with the bundle batch by batch
    and write the predictions to ``--out`` atomically; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle folder written by export.py (holds manifest.json)")
    p.add_argument("--input", required=True,
                   help="products: challenge X CSV, SIGIR TSV, or JSON lines (title/designation, description, ...)")
    p.add_argument("--images", default=None, help="folder of the products' images")
    p.add_argument("--out", required=True, help="predictions file to write (.csv, or .jsonl for JSON lines)")
    p.add_argument("--batch-rows", type=int, default=2048,
                   help="products per prediction batch (bounds memory on large inputs)")
    p.add_argument("--device", default="cpu", help="torch device of the bundle's models (cpu, cuda, cuda:1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    quiet_progress(args.no_progress)
    with one_line_errors():
        # heavy: numpy, pandas and the bundle (torch) load only after the arguments are checked
        import numpy as np
        import pandas as pd
        from tqdm.auto import tqdm

        from rakuten.artifacts import atomic_path
        from rakuten.bundle import Bundle, predictions_frame, read_products

        if args.batch_rows < 1:
            raise RakutenError("--batch-rows must be >= 1")
        if args.images is not None and not Path(args.images).is_dir():
            raise RakutenError(f"--images {args.images}: no such folder")
        if Path(args.out).is_dir():
            raise RakutenError(f"--out {args.out}: is a directory; give a file name (.csv or .jsonl)")
        bundle = Bundle(args.bundle, device=args.device)
        products = read_products(args.input, args.images)
        parts = []
        try:
            with tqdm(total=len(products), unit="product", disable=args.no_progress) as bar:
                for s in range(0, len(products), args.batch_rows):
                    chunk = products.iloc[s:s + args.batch_rows].reset_index(drop=True)
                    parts.append(predictions_frame(bundle, chunk, bundle.predict(chunk)))
                    bar.update(len(chunk))
        finally:
            bundle.close()
        out = pd.concat(parts) if parts else pd.DataFrame()
        path = Path(args.out)
        with atomic_path(path) as tmp:
            if path.suffix == ".jsonl":
                out.reset_index(names="row_index").to_json(tmp, orient="records", lines=True)
            else:
                out.to_csv(tmp, index=True, index_label="", lineterminator="\n")
        n_missing = int(np.sum(out["missing_inputs"] != "")) if len(out) else 0
        print(f"wrote {path}: {len(out)} products ({n_missing} with a missing input), model {bundle.model_version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
