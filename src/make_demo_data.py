"""Write a synthetic demo dataset in the ChallengeData Rakuten France file layout.

    python src/make_demo_data.py --out data/demo --n-train 3000 --n-test 600 --seed 0

The files (X_train_update.csv, Y_train_CVw08PX.csv, X_test_update.csv, image_train/, image_test/)
let every stage run without the real data; see ``rakuten.data.demo`` for how they are designed.
Re-running with the same parameters is a no-op; other parameters need ``--overwrite``.
"""
from __future__ import annotations

import argparse
import sys

from rakuten.data.demo import GENERATOR_VERSION, generate_demo_dataset
from rakuten.paths import Paths


def parse_args(argv=None) -> argparse.Namespace:
    """The command line's arguments (``argv``; ``None``: ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None,
                   help="output folder (default: <workdir>/data/demo, where the stages look for demo data)")
    p.add_argument("--n-train", type=int, default=3000, help="number of train rows (default: 3000)")
    p.add_argument("--n-test", type=int, default=600, help="number of test rows (default: 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> byte-identical files (default: 0)")
    p.add_argument("--image-size", type=int, default=500,
                   help="side of the square JPEGs in pixels (default: 500, as in the challenge)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous demo dataset with other parameters (a folder that is not "
                        "demo data is never replaced)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes for the images (default: number of CPUs, at most 8); "
                        "the output does not depend on it")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Entry point: parse the arguments, generate the demo dataset (nothing written when the same one is
    there) and print its summary; returns the exit status (2 on bad parameters or an output folder it
    must not replace)."""
    args = parse_args(argv)
    out = args.out if args.out is not None else Paths.make().demo_data_dir
    try:
        s = generate_demo_dataset(out, args.n_train, args.n_test, args.seed, image_size=args.image_size,
                                  overwrite=args.overwrite, n_jobs=args.jobs, progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state = "already there, nothing written" if s["skipped"] else "written"
    print(f"demo data (generator {GENERATOR_VERSION}, seed {s['seed']}) {state}: {s['out_dir']}")
    print(f"  rows: {s['n_train']} train, {s['n_test']} test; classes in train: {s['n_classes_train']}/27; "
          f"images {s['image_size']}x{s['image_size']}")
    print(f"  missing descriptions: {s['missing_description_pct']:.1f}% of train rows; "
          f"noisy labels: {s['label_noise_rows']}")
    print(f"  seconds: {s['seconds']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
