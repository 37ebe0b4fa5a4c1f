"""Export a finished run's submitted model as a self-contained bundle for new products.

    python src/export.py --preset demo --out bundle/
    python src/export.py --preset cpu --workdir /runs/rakuten --out /models/rakuten_cpu

Reads ``submissions/submitted.json`` (which model the run submitted, with its per-class biases) and
copies that model's fold models and every fold model it reads into ``--out``; see
``src/rakuten/bundle.py`` for the layout. Prints the bundle's size and its load time.
"""
from __future__ import annotations

import argparse

from rakuten.cli import add_common_args, one_line_errors, paths_from_args, setup_logging


def main(argv=None) -> int:
    """Entry point: parse the arguments, check that the run's submitted model belongs to ``--preset``,
    export it as a bundle to ``--out`` and print its size and load time; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--preset", required=True, help="the preset the run used (demo, cpu, gpu, or a YAML path)")
    p.add_argument("--out", required=True, help="bundle folder to write (replaced if it holds a bundle)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # heavy: pandas and numpy (the bundle) load only after the arguments are checked
        from rakuten.bundle import Bundle, BundleError, export_bundle, submitted_experiment
        from rakuten.presets import load_preset

        paths = paths_from_args(args, writable=False)
        preset = load_preset(args.preset)
        sub = submitted_experiment(paths)["experiment"]
        cands = preset.get("submit")
        cands = [cands] if isinstance(cands, str) else list(cands or [])
        if cands and sub.removesuffix("_tuned") not in cands:
            # a candidate's inputs may be submitted as the fallback (none beat its best input)
            from rakuten.artifacts import Experiment
            ups = set()
            for c in cands:
                for n in (c, f"{c}_tuned"):
                    e = Experiment(paths.oof_dir, n)
                    if e.meta_path.exists():
                        ups |= set(e.read_meta().get("upstream") or {})
            if sub not in ups:
                raise BundleError(f"the run in {paths.workdir} submitted {sub}, which is not a model of preset "
                                  f"{preset.get('name')}; pass the preset the run used")
        res = export_bundle(paths, args.out, preset_name=preset.get("name"))
        b = Bundle(res["path"])
        print(f"wrote {res['path']}: {res['model_version']} ({len(res['members'])} members: "
              f"{', '.join(res['members'])})")
        print(f"size {res['bytes'] / 2**20:.1f} MiB; loads in {b.load_seconds:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
