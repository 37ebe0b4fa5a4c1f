"""Rank the training rows whose label an experiment's out-of-fold probabilities contradict.

    python src/find_label_issues.py --exp tfidf_svm_text [--method cleanlab] [--workdir DIR] [--data-dir DIR]

Reads only ``oof/<exp>/fold<k>.npz`` (every row's probability comes from the fold model that did
not train on it) and runs ``cleanlab.filter.find_label_issues`` on them. Writes, in ``oof/<exp>/``:

- ``label_issues.csv``: id, given_code, suggested_code, score (cleanlab's label quality, lower =
  more suspect), most suspect first; what ``data.label_issues.file`` reads;
- ``label_issues_per_class.csv``: flagged share per given code;
- ``label_issues_pairs.png``: the most frequent (given code -> suggested code) pairs.
"""
from __future__ import annotations

import argparse

from rakuten.cli import add_common_args, one_line_errors, paths_from_args, setup_logging


def main(argv=None) -> int:
    """Entry point: parse the arguments, flag the training labels that ``--exp``'s OOF probabilities
    contradict (cleanlab) and write the issue tables and the pairs chart in its folder; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--exp", required=True, help="finished experiment (unimodal, fusion or stack) under oof/")
    p.add_argument("--method", default="cleanlab", choices=["cleanlab"], help="noise finder (default cleanlab)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # heavy: pandas, and scikit-learn in cleaning, load only after the arguments are checked
        from rakuten.artifacts import ArtifactError, Experiment, atomic_write_csv
        from rakuten.data.prepared import load_dataset
        from rakuten.lineage import finished_oof
        from rakuten.training.cleaning import confused_pairs, label_issue_table, per_class_table, plot_confused_pairs

        paths = paths_from_args(args)
        exp = Experiment(paths.oof_dir, args.exp)
        if not exp.meta_path.exists():
            raise ArtifactError(f"{exp.dir}: no finished experiment {args.exp!r} (meta.json missing)")
        _, folds_df, _, oof = finished_oof(paths, exp)
        label_map = load_dataset(paths).label_map
        labels = folds_df["label"].to_numpy()
        issues = label_issue_table(oof.ids, labels, oof.logits, label_map)
        atomic_write_csv(exp.dir / "label_issues.csv", issues, index=False)
        atomic_write_csv(exp.dir / "label_issues_per_class.csv", per_class_table(issues, labels, label_map),
                         index=False)
        pairs = confused_pairs(issues)
        plot_confused_pairs(pairs, exp.dir / "label_issues_pairs.png",
                            f"{args.exp}: {len(issues)} of {len(labels)} training labels flagged (cleanlab, OOF)")
        print(f"{args.exp}: {len(issues)} of {len(labels)} training labels flagged "
              f"({len(issues) / len(labels):.1%}); wrote {exp.dir / 'label_issues.csv'}")
        for _, r in pairs.head(5).iterrows():
            print(f"  {r['given_code']} -> {r['suggested_code']}: {r['n']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
