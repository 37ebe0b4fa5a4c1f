"""Generated demo data with a labelled test split, in the layout of ``../shared/data/rakuten_text_fr``.

    python benchmarks/make_demo_holdout.py --out /tmp/demo_holdout [--n 3000 --seed 0]

The demo generator writes no test codes; this generates ``--n`` labelled products (text only) and
splits them 80/20 stratified, writing the test codes to ``test_labels/Y_test.csv`` so that
``benchmarks/label_noise_real.py`` can score the demo data the way it scores the real data.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split


from rakuten.data.demo import generate_demo_dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=0,
                   help="also write the images at this size (0: text only, as the label-noise benchmark needs)")
    args = p.parse_args(argv)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        generate_demo_dataset(Path(tmp), n_train=args.n, n_test=10, seed=args.seed,
                              image_size=args.image_size or 16)
        x = pd.read_csv(Path(tmp) / "X_train_update.csv", index_col=0)
        y = pd.read_csv(Path(tmp) / "Y_train_CVw08PX.csv", index_col=0)
        tr, te = train_test_split(x.index, test_size=0.2, stratify=y["prdtypecode"], random_state=args.seed)
        if args.image_size:
            # each split's images in its own folder, under the challenge's file names
            for rows, folder in ((tr, "image_train"), (te, "image_test")):
                (out / folder).mkdir(parents=True, exist_ok=True)
                for _, r in x.loc[rows].iterrows():
                    name = f"image_{r['imageid']}_product_{r['productid']}.jpg"
                    shutil.copy(Path(tmp) / "image_train" / name, out / folder / name)
    (out / "test_labels").mkdir(parents=True, exist_ok=True)
    x.loc[tr].to_csv(out / "X_train_update.csv")
    y.loc[tr].to_csv(out / "Y_train_CVw08PX.csv")
    x.loc[te].reset_index(drop=True).to_csv(out / "X_test_update.csv")
    y.loc[te].reset_index(drop=True).to_csv(out / "test_labels" / "Y_test.csv")
    print(f"wrote {out}: {len(tr)} train / {len(te)} test rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
