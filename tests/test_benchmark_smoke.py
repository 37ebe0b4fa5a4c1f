"""The benchmark harness end to end at tiny sizes on CPU: it runs and writes the expected JSON.

No timing is asserted: CPU figures at tiny sizes say nothing about a GPU.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_throughput_tiny_writes_results(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--all", "--tiny", "--device", "cpu",
         "--out-dir", str(tmp_path / "results"), "--data-dir", str(tmp_path / "data"),
         # two loops per model, as the GPU suite compares them (CUDA-graph modes fall back to eager on CPU)
         "--text-variants", "eager,cudagraphs", "--image-variants", "2,4:default", "--profile-steps", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    files = list((tmp_path / "results").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("cpu-") and files[0].name.endswith("-tiny.json")
    res = json.loads(files[0].read_text())
    assert {"device", "date", "versions", "args", "length_fit", "peak", "benchmarks", "errors", "skipped",
            "projection", "markdown"} <= set(res)
    assert res["device"] == "cpu" and res["errors"] == {} and res["skipped"] == []
    assert set(res["benchmarks"]) == {"image-loader", "camembert-base", "flaubert/flaubert_base_cased",
                                      "seresnext50_32x4d"}
    for name in ("camembert-base", "flaubert/flaubert_base_cased", "seresnext50_32x4d"):
        r = res["benchmarks"][name]
        for loop in ("naive", "project"):
            assert r[loop]["train_samples_per_s"] > 0 and r[loop]["eval_samples_per_s"] > 0
            assert "train_mfu_vs_measured" in r[loop]
        assert r["speedup_train"] > 0 and r["flops"]
    for name in ("camembert-base", "flaubert/flaubert_base_cased"):
        assert set(res["benchmarks"][name]["variants"]) == {"eager", "cudagraphs"}
    assert set(res["benchmarks"]["seresnext50_32x4d"]["variants"]) == {"b2", "b4-default"}
    best = res["benchmarks"]["camembert-base"]["project"]
    assert best["variant"] in ("eager", "cudagraphs")
    assert best["train_samples_per_s"] == max(v["train_samples_per_s"]
                                              for v in res["benchmarks"]["camembert-base"]["variants"].values())
    prof = res["benchmarks"]["camembert-base"]["variants"]["eager"]["profile"]
    assert prof["steps"] == 2 and prof["wall_ms_per_step"] > 0 and "Self CPU" in prof["table"]
    assert res["benchmarks"]["camembert-base"]["project"]["attn"] == "sdpa"
    assert res["benchmarks"]["camembert-base"]["project"]["eval_order_ok"] is True
    loader = res["benchmarks"]["image-loader"]
    assert loader["naive_jpeg_images_per_s"] > 0 and loader["cached_uint8_images_per_s"] > 0
    assert loader["cache_counts"]["missing"] == 0 and loader["cache_counts"]["unreadable"] == 0
    scenarios = res["projection"]["scenarios"]
    assert set(scenarios) == {"text_10ep_image_20ep", "text_4ep_image_20ep", "text_3ep_image_20ep"}
    for sc in scenarios.values():
        assert sc["naive"]["total_hours"] > 0 and sc["project"]["total_hours"] > 0 and "speedup" in sc
    assert any("seresnext50_32x4d" in row for row in res["markdown"])
    assert "| cpu | camembert-base |" in proc.stdout


def test_projection_merges_the_fastest_variant_at_the_benchmark_batch(tmp_path):
    import project_from_results as pfr   # benchmarks/ is on the path by pytest.ini

    def text(train, eval_, batch=32):
        return {"train_samples_per_s": train, "eval_samples_per_s": eval_, "batch": batch}
    naive = {"train_samples_per_s": 100.0, "eval_samples_per_s": 300.0}
    a = {"device": "GPU X", "benchmarks": {
        "camembert-base": {"batch": 32, "naive": naive,
                           "variants": {"eager": text(300, 900), "eager-b128": text(900, 900, batch=128)}},
        "seresnext50_32x4d": {"batch": 64, "naive": naive, "cache_build_images_per_s": 1000.0,
                              "variants": {"b64": text(500, 800, 64), "b256": text(700, 800, 256)}}}}
    b = {"device": "GPU X", "benchmarks": {
        "flaubert/flaubert_base_cased": {"batch": 32, "naive": naive, "variants": {"eager": text(250, 800)}},
        "camembert-base": {"batch": 32, "naive": dict(naive, train_samples_per_s=1.0),
                           "variants": {"cudagraphs": text(600, 2000), "broken": {"error": "x"}}}}}
    fa, fb = tmp_path / "a.json", tmp_path / "b.json"
    fa.write_text(json.dumps(a))
    fb.write_text(json.dumps(b))
    merged, source = pfr.merge([fa, fb])
    assert merged["camembert-base"]["project"]["variant"] == "cudagraphs"       # fastest at batch 32
    assert merged["camembert-base"]["naive"]["train_samples_per_s"] == 100.0    # first file's naive
    assert merged["seresnext50_32x4d"]["project"]["variant"] == "b256"         # images: any batch
    assert source["camembert-base"]["project"] == "b.json:cudagraphs"
    assert pfr.main([str(fa), str(fb)]) == 0
    c = dict(b, device="GPU Y")
    fc = tmp_path / "c.json"
    fc.write_text(json.dumps(c))
    import pytest
    with pytest.raises(SystemExit, match="different devices"):
        pfr.merge([fa, fc])
