"""Hours of the thesis's full 5-fold plan on the benchmarked device, from the measured rates.
"""
from __future__ import annotations

from throughput.common import IMAGE_MODEL, N_FOLDS, N_TEST, N_TRAIN, TEXT_MODELS


def project_full_run(benchmarks: dict, text_epochs=(10, 4, 3), image_epochs: int = 20,
                     image_model: str = IMAGE_MODEL, description_factor: float = 1.0) -> dict:
    """Hours for the thesis plan on this device, from the measured rates.

    Per fold: train on 4/5 of the 84,916 products for E epochs, predict the held-out fifth every
    epoch (early stopping needs it) and the 13,812 test products once. Text: 2 models (CamemBERT,
    FlauBERT) x 2 runs (title, description) at seq 256; both runs use the title+description length
    fit, which overstates the project loop's cost for title runs (the naive loop pads them to 256
    anyway). Image: SE-ResNeXt-50 at 224 px for ``image_epochs`` epochs; the project adds the one-off
    cache build (train + test images).

    ``description_factor``: when the text rates were measured on title lengths, a description run
    costs this many times a title run per product (the suite passes mean description tokens / mean
    title tokens: time taken as proportional to real tokens, which packing makes nearly true). 1.0
    (default): both runs at the measured rate, as before.
    """
    n_tr = N_TRAIN * (N_FOLDS - 1) / N_FOLDS
    n_val = N_TRAIN / N_FOLDS

    def run_seconds(r: dict, epochs: int) -> float:
        return n_tr * epochs / r["train_samples_per_s"] + (n_val * epochs + N_TEST) / r["eval_samples_per_s"]

    text_runs = 1.0 + float(description_factor)   # a title run + a description run, in title-run units

    out: dict = {"assumptions": {
        "n_train": N_TRAIN, "n_test": N_TEST, "folds": N_FOLDS, "text_runs_per_model_per_fold": 2,
        "text_models": [m for m in TEXT_MODELS], "image_model": image_model, "image_epochs": image_epochs,
        "eval": "held-out fold every epoch + test once per fold",
        "description_factor": float(description_factor)}, "scenarios": {}}
    text = {m: benchmarks.get(m) for m in TEXT_MODELS}
    img = benchmarks.get(image_model)
    for E in text_epochs:
        sc = {}
        for loop in ("naive", "project"):
            parts, missing = {}, []
            for m, r in text.items():
                if r and loop in r:
                    # the naive loop pads every row to seq_len: its cost does not depend on lengths
                    runs = 2.0 if loop == "naive" else text_runs
                    parts[m] = N_FOLDS * runs * run_seconds(r[loop], E) / 3600
                else:
                    missing.append(m)
            if img and loop in img:
                parts[image_model] = N_FOLDS * run_seconds(img[loop], image_epochs) / 3600
                if loop == "project" and img.get("cache_build_images_per_s"):
                    parts["image_cache_build"] = (N_TRAIN + N_TEST) / img["cache_build_images_per_s"] / 3600
            else:
                missing.append(image_model)
            sc[loop] = {"hours": parts, "total_hours": sum(parts.values()), "missing": missing}
        if sc["project"]["total_hours"] > 0 and not sc["naive"]["missing"] and not sc["project"]["missing"]:
            sc["speedup"] = sc["naive"]["total_hours"] / sc["project"]["total_hours"]
        out["scenarios"][f"text_{E}ep_image_{image_epochs}ep"] = sc
    return out
