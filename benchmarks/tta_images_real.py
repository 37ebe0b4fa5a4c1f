"""Test-time augmentation (``predict.tta``) side by side with it off, on real product images.

    python benchmarks/tta_images_real.py --data ../shared/data/rakuten_images_real [--exp image_effnetlite0]

The same image experiment on the frozen 5 folds, once with the identity view and once averaging the
logits of [identity, hflip]; OOF and bagged test macro/weighted-F1 (test codes from
``test_labels/Y_test.csv``). JSON goes to ``benchmarks/results/tta_<data>.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path


from label_noise_real import RESULTS, run_variant, score
from rakuten.paths import Paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--exp", default="image_effnetlite0")
    p.add_argument("--workdir", default=None, help="default: /tmp/tta_<data>")
    args = p.parse_args(argv)
    from real_data import test_labels
    from rakuten.cli import setup_logging
    from rakuten.data.prepared import load_dataset
    from rakuten.folds import folds_path, make_folds, write_folds
    setup_logging()
    data = Path(args.data).resolve()
    paths = Paths.make(args.workdir or f"/tmp/tta_{data.name}", data)
    ds = load_dataset(paths)
    write_folds(make_folds(ds.train, 5, 42), folds_path(paths.folds_dir, 5, 42), 5, 42, extra={"data_dir": str(data)})
    y_test = test_labels(data, ds)
    rows = []
    for label, name, ov in (("tta off", args.exp, []),
                            ("tta [identity, hflip]", f"{args.exp}_tta_hflip", ["predict.tta=[identity,hflip]"])):
        t0 = time.time()
        t = run_variant(paths, ds, args.exp, name, ov)
        rows.append({"variant": label, "experiment": name, "overrides": ov, **t, **score(paths, ds, name, y_test),
                     "wall_seconds": round(time.time() - t0, 1)})
        print(f"{label}: OOF {rows[-1]['oof']} test {rows[-1]['test']}", flush=True)
    out = {"date": str(date.today()), "data": str(data), "n_train": len(ds.train), "n_test": len(ds.test),
           "experiment": args.exp, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / f"tta_{data.name}.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
