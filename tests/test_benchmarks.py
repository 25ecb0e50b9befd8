"""The benchmark scripts run end to end (tiny clips, one repeat): their numbers are not checked, their plumbing is."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vs_transformers_reports_a_ratio_with_agreeing_outputs(tmp_path, dtype):
    pytest.importorskip("transformers")
    out = run_script("vs_transformers.py", "--sizes", "2x32", "--repeats", "1", "--dtype", dtype,
                     "--json", str(tmp_path / "r.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "vivit is" in out.stdout
    (row,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert row["dtype"] == dtype and row["speedup"] > 0
    assert set(row["seconds"]) == {"vivit", "transformers[sdpa]", "transformers[eager]"}
    assert row["max_abs_diff"] < (1e-4 if dtype == "float32" else 1.0)


def test_cpu_dtypes_compares_bfloat16_with_float32(tmp_path):
    out = run_script("cpu_dtypes.py", "--size", "2x32", "--repeats", "1", "--models", "vivit_b_16x2",
                     "vivit_b_16x2_fdp", "--json", str(tmp_path / "r.jsonl"))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["vivit_b_16x2", "vivit_b_16x2_fdp"]
    for row in rows:
        assert set(row["speedup"]) == {"bfloat16", "autocast_bf16"}
        assert all(v < 0.05 for v in row["max_rel_diff"].values()), row


def test_gpu_benchmark_runs_its_code_path_on_cpu(tmp_path):
    out = run_script("gpu.py", "--device", "cpu", "--models", "vivit_b_16x2", "vivit_b_16x2_fe", "--frames", "2",
                     "--size", "32", "--batch", "2", "--steps", "1", "--dtype", "bf16", "--train", "--depth", "1",
                     "--json", str(tmp_path / "r.jsonl"))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    # The CPU has a flash kernel but no memory-efficient one: that backend is reported unavailable, never "math".
    assert [(r["model"], r["backend"]) for r in rows] == [("vivit_b_16x2", "FLASH_ATTENTION"),
                                                          ("vivit_b_16x2_fe", "FLASH_ATTENTION")]
    assert out.stdout.count("EFFICIENT_ATTENTION: not available") == 2
    assert all(r["train"] and r["clips_per_s"] > 0 and r["dtype"] == "bf16" for r in rows)


def test_gpu_peak_lookup_prefers_the_most_specific_name():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("NVIDIA H200") == 989.0
    assert gpu.peak_tflops("Some Future GPU") is None


def test_gpu_benchmark_refuses_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: benchmarks/gpu.py would run for real")
    out = run_script("gpu.py", "--models", "vivit_b_16x2")
    assert out.returncode != 0 and "needs a CUDA GPU" in out.stderr


def test_scaling_measures_each_configuration_in_its_own_process(tmp_path):
    pytest.importorskip("matplotlib")
    out = run_script("scaling.py", "--frames", "2", "4", "--models", "Model 1", "Model 2", "--out",
                     str(tmp_path / "s.png"), "--json", str(tmp_path / "r.jsonl"))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["model"], r["frames"]) for r in rows] == [("Model 1", 2), ("Model 1", 4), ("Model 2", 2), ("Model 2", 4)]
    for row in rows:
        assert row["gmacs"] > 0 and row["cpu_s"] > 0 and row["forward_mem_gib"] > 0  # a fresh process grows
    assert rows[1]["gmacs"] > rows[0]["gmacs"]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_pipeline_benchmark_reports_end_to_end_next_to_its_stages(tmp_path):
    pytest.importorskip("av")
    out = run_script("pipeline.py", "--videos", "3", "--video-frames", "16", "--video-size", "32", "--workers", "0",
                     "1", "--repeats", "1", "--batch-size", "2", "--json", str(tmp_path / "r.jsonl"),
                     "--timeline-seconds", "6")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    timeline = rows.pop()
    # vivit_motion: 16-frame windows every 8 frames over 6 s at 25 fps (150 frames): (150 - 16) // 8 + 1
    assert timeline["job"] == "timeline" and timeline["windows"] == 17
    rates = timeline["windows_per_s"]
    assert all(v > 0 for v in rates.values())
    assert timeline["ratio"] == pytest.approx(rates["end_to_end"] / min(rates["decode_only"], rates["model_only"]),
                                              rel=0.02)
    assert [r["workers"] for r in rows] == [0, 1] and "end-to-end / slower" in out.stdout
    for row in rows:
        rates = row["videos_per_s"]
        assert set(rates) == {"decode_only", "model_only", "end_to_end"} and all(v > 0 for v in rates.values())
        slower = min(rates["decode_only"], rates["model_only"])
        assert row["ratio"] == pytest.approx(rates["end_to_end"] / slower, rel=0.02)


def test_token_merging_times_every_r_and_scores_vivit_motion(tmp_path):
    out = run_script("token_merging.py", "--sizes", "2x32", "--models", "Model 1", "--r", "0", "1", "--repeats", "1",
                     "--num-test", "20", "--motion-r", "0", "8", "--json", str(tmp_path / "r.jsonl"))
    assert out.returncode == 0, out.stderr
    speed, acc = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert speed["model"] == "vivit_b_16x2" and set(speed["seconds"]) == {"0", "1"} and speed["speedup"]["0"] == 1
    assert acc["model"] == "vivit_motion" and set(acc["top1"]) == {"0", "8"}
    assert all(0 <= v <= 1 for v in acc["top1"].values())
def test_cpu_backends_reports_every_path_with_its_error(tmp_path):
    pytest.importorskip("openvino")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_backends.py"), "--models", "vivit_motion",
                          "--sizes", "4x32", "--paths", "eager", "openvino", "optimize", "--repeats", "1",
                          "--json", str(tmp_path / "r.jsonl")], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "VIVIT_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert "peak: " in out.stdout and "GFLOP/s" in out.stdout
    (row,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert set(row["seconds"]) == {f"{p} {d}" for p in ("eager", "openvino", "optimize") for d in ("float32",
                                                                                                    "bfloat16")}
    assert row["gflop"] > 0 and row["max_abs_err"]["eager float32"] == 0
    assert row["max_abs_err"]["optimize float32"] < 1e-4


def test_startup_compares_import_vivit_with_import_torch(tmp_path):
    out = run_script("startup.py", "--repeats", "1", "--json", str(tmp_path / "r.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "x import torch" in out.stdout and "CPU:" in out.stdout
    (row,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert set(row["seconds"]) == {"import torch", "import vivit", "import vivit, timm", "vivit --help"}


def test_timeline_benchmark_reports_real_time_factors(tmp_path):
    pytest.importorskip("av")
    settings = ["M2 dense", "M2 reuse", "M2 OV reuse ToMe", "M1 static"]  # OpenVINO's rows: one, converting little
    out = run_script("timeline.py", "--seconds", "3", "--size", "160x96", "--repeats", "1", "--depth", "1",
                     "--m2-size", "128", "--m1-size", "64", "--json", str(tmp_path / "r.jsonl"), "--settings",
                     *(settings if importlib.util.find_spec("openvino") else settings[:2] + settings[3:]))
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert set(row["rows"]) <= set(settings) and {"M2 dense", "M2 reuse", "M1 static"} <= set(row["rows"])
    assert all(r["rtf"] > 0 and r["windows"] > 0 for r in row["rows"].values()) and 0 < row["kept"] <= 1
    reuse = row["rows"]["M2 reuse"]  # where the time went: the two encoders and the rest, adding up to the whole
    assert reuse["spatial"] > 0 and reuse["temporal"] > 0
    assert reuse["spatial"] + reuse["temporal"] + reuse["other"] == pytest.approx(reuse["seconds"], abs=0.01)
    assert row["matmul_gflops"] > 0 and row["m2_gflop_per_video_second"]["reuse"] > 0
    assert "speed-up M2 reuse vs M2 dense" in out.stdout and "real-time factor" in out.stdout


def test_timeline_agreement_reports_each_setting_against_the_dense_model(tmp_path):
    pytest.importorskip("av")
    out = run_script("timeline_agreement.py", "--changes", "4", "--merging", "2", "--json", str(tmp_path / "r.jsonl"))
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert set(row["rows"]) == {"dense", "reuse", "reuse + ToMe r=2"}
    assert row["rows"]["dense"]["agreement"] == row["rows"]["reuse"]["agreement"] == 1.0  # reuse is exact
    assert "agrees with dense" in out.stdout


def test_int8_reports_accuracy_fidelity_speed_and_profile(tmp_path):
    pytest.importorskip("nncf")
    out = run_script("int8.py", "--clips", "20", "--calibration", "4", "--alphas", "-1", "--models", "vivit_b_16x2",
                     "--size", "2x32", "--depth", "1", "--speed-models", "vivit_b_16x2", "--tome", "1",
                     "--speed-calibration", "2", "--repeats", "1", "--profile", "--cache", str(tmp_path),
                     "--gemm", "8")
    assert out.returncode == 0, out.stderr
    for line in ("| int8, SmoothQuant alpha -1 |", "| vivit_b_16x2 | 0.95 |", "| optimize int8, token merging r=1 |",
                 "| torch eager float32 |", "| optimize bfloat16, token merging r=1 |", "One Linear(768, 3072) on 8",
                 "vivit_b_16x2 int8:", "vivit_b_16x2 float32:"):
        assert line in out.stdout, line


def test_static_accuracy_scores_drop_static_against_dense(tmp_path):
    out = run_script("static_accuracy.py", "--steps", "2", "--num-train", "16", "--clips", "20", "--taus", "0",
                     "0.045", "--json", str(tmp_path / "r.jsonl"))
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    dense, off, default = row["rows"]["dense"], row["rows"]["tau=0"], row["rows"]["tau=0.045 (default)"]
    assert off == {**dense, "tau": 0} and off["max_logit_diff"] == 0 and off["kept"] == 1.0  # tau 0 is dense, exactly
    assert 0 < default["kept"] < 1 and 0 <= default["top1"] <= 1
    assert row["per_class"]["tau=0"] == row["per_class"]["dense"]
    for line in ("| setting | top-1 | tokens kept |", "| dense | ", "| tau=0.045 (default) | ", "per-class top-1"):
        assert line in out.stdout, line
