"""The preset step of ``benchmarks/run_gpu_suite.sh``: the ``gpu`` preset end to end on demo data,
1 epoch, 2 folds, without the hub.

``backbones``: full-size random-init text backbones in local folders (CamemBERT-base and
FlauBERT-base dimensions, from ``throughput.common.TEXT_MODELS``, each with a WordPiece tokenizer
trained on the demo titles and descriptions): the GPU machine has no hub, and a random init needs only
a config and a tokenizer. ``preset``: a preset file over ``configs/presets/gpu.yaml`` that sets the
demo data size, 2 folds, 1 epoch, eager training (compilation is measured by the throughput steps),
packing on for the text models (the packed path in the real pipeline) and, in ``full`` mode, points
every text experiment at those folders with ``model.pretrained=false`` and the image model at a
random-init SE-ResNeXt-50. ``reduced`` mode leaves the backbones to ``run_all.py --backbones reduced``.

    python benchmarks/throughput/suite_preset.py backbones --data DEMO_DIR --out DIR
    python benchmarks/throughput/suite_preset.py preset --mode full --backbones-dir DIR --out P.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from throughput.common import TEXT_MODELS

TEXT_EXPERIMENTS = {"text_camembert_title": "camembert-base", "text_camembert_description": "camembert-base",
                    "text_camembert_text": "camembert-base", "text_flaubert_title": "flaubert/flaubert_base_cased",
                    "text_flaubert_description": "flaubert/flaubert_base_cased"}
# demo data: enough rows for every class in 2 folds, little enough for the 8-minute lease
DEMO = {"full": dict(n_train=600, n_test=100, seed=0, image_size=500),
        "reduced": dict(n_train=240, n_test=24, seed=0, image_size=64)}


def folder_name(model: str) -> str:
    """A hub name as one folder name (``flaubert/flaubert_base_cased`` -> ``flaubert__flaubert_base_cased``)."""
    return model.replace("/", "__")


def make_backbones(data_dir: Path, out: Path, vocab_size: int = 8000) -> dict:
    """Config + tokenizer folders of full-size random-init text backbones; returns {model: folder}."""
    # heavy: transformers and pandas, only for this subcommand
    import transformers

    from rakuten.data.challenge import load_challenge
    from rakuten.models.tiny_tokenizer import train_wordpiece

    ds = load_challenge(data_dir)
    texts = ds.train["title"].tolist() + ds.train["description"].tolist()
    tok = train_wordpiece(texts, vocab_size=vocab_size)
    folders = {}
    for model, spec in TEXT_MODELS.items():
        kw = dict(spec["config"])
        if spec["family"] == "camembert":
            kw.update(pad_token_id=tok.pad_token_id)
            cfg = transformers.CamembertConfig(**kw)
        else:
            kw.update(pad_index=tok.pad_token_id, pad_token_id=tok.pad_token_id)
            cfg = transformers.FlaubertConfig(**kw)
        d = out / folder_name(model)
        cfg.save_pretrained(str(d))
        tok.save_pretrained(str(d))
        folders[model] = d
    return folders


def preset_text(mode: str, backbones_dir: Path | None) -> str:
    """The YAML of the suite's preset (over configs/presets/gpu.yaml)."""
    d = DEMO[mode]
    lines = [f"# written by benchmarks/throughput/suite_preset.py ({mode} backbones)",
             f"_base_: {ROOT / 'configs' / 'presets' / 'gpu.yaml'}",
             "name: gpu_suite",
             "demo_data: {" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}",
             "folds: {k: 2, seed: 42}",
             "overrides:",
             "  all: {train.epochs: 1, train.compile: false, train.checkpoint: false"
             + (", train.num_workers: 0" if mode == "reduced" else "") + "}"]
    for exp, model in TEXT_EXPERIMENTS.items():
        extra = ""
        if mode == "full":
            extra = f", model.backbone: '{backbones_dir / folder_name(model)}', model.pretrained: false"
        lines.append(f"  {exp}: {{data.packing: true{extra}}}")
    if mode == "full":
        lines.append("  image_seresnext50: {model.pretrained: false}")
    lines.append("  stack_gpu_lgbm: {lgbm.num_boost_round: 60, lgbm.num_leaves: 7}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backbones", help="full-size random-init backbone folders")
    b.add_argument("--data", required=True, help="demo data folder (its texts train the tokenizer)")
    b.add_argument("--out", required=True)
    p = sub.add_parser("preset", help="write the suite's preset YAML")
    p.add_argument("--mode", choices=sorted(DEMO), required=True)
    p.add_argument("--backbones-dir", default=None)
    p.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "backbones":
        for model, d in make_backbones(Path(args.data), Path(args.out)).items():
            print(f"{model}: {d}")
        return 0
    if args.mode == "full" and not args.backbones_dir:
        ap.error("--mode full needs --backbones-dir")
    Path(args.out).write_text(preset_text(args.mode, Path(args.backbones_dir) if args.backbones_dir else None))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
