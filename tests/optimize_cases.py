"""vivit.optimize: OpenVINO outputs match torch, the conversion is cached safely, every fault falls back or says so.

Run by tests/test_optimize.py in a pytest process of its own (OpenVINO stays out of the main test process)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vivit
from vivit.tasks import optimize as opt

pytest.importorskip("openvino", reason='OpenVINO is the optional extra vivit[openvino]: pip install "vivit[openvino]"')

VARIANTS = ["spacetime", "factorized_encoder", "factorized_self_attention", "factorized_dot_product"]
ROOT = Path(__file__).resolve().parents[1]


def tiny(variant: str = "spacetime", num_classes: int = 10, seed: int = 0) -> vivit.ViViT:
    """A tiny model with a non-zero head (the reference's zero head would make every logit equal)."""
    torch.manual_seed(seed)
    model = vivit.ViViT(variant=variant, img_size=32, num_frames=4, embed_dim=64, depth=1, temporal_depth=1,
                        num_heads=4, mlp_dim=128, num_classes=num_classes, global_pool="avg").eval()
    if num_classes:
        torch.nn.init.normal_(model.head.weight)
    return model


def clip(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _fresh_messages(monkeypatch):
    monkeypatch.setattr(opt, "_said", set())


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the variant tests, so float32 and bfloat16 share each variant's conversion."""
    return tmp_path_factory.mktemp("optimized")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A cache folder holding ``tiny()``'s entry, converted once for the tests that start from one."""
    folder = tmp_path_factory.mktemp("converted")
    vivit.optimize(tiny(), cache_dir=folder)
    return folder


def copy_of(converted: Path, tmp_path: Path) -> Path:
    shutil.copytree(converted, tmp_path / "cache")
    return tmp_path / "cache"


@pytest.mark.parametrize("variant", VARIANTS)
def test_openvino_float32_and_bfloat16_match_torch(variant, cache):
    model, x = tiny(variant), clip()
    with torch.inference_mode():
        ref = model(x)
        torch_bf16 = tiny(variant).to(torch.bfloat16)(x.bfloat16()).float()
    fp32 = vivit.optimize(model, torch.float32, cache_dir=cache)
    assert fp32.backend == "openvino"
    assert (fp32(x) - ref).abs().max() < 1e-4
    bf16 = vivit.optimize(model, torch.bfloat16, cache_dir=cache)
    assert "read from" in bf16.note  # the IR is precision-free: one conversion serves both
    # bfloat16 keeps 8 bits of mantissa: OpenVINO's error is of the order of torch's own bfloat16 error
    torch_err, scale = float((torch_bf16 - ref).abs().max()), float(ref.abs().max())
    assert float((bf16(x) - ref).abs().max()) <= max(3 * torch_err, 0.01 * scale)


def test_headless_model_returns_features_and_pre_logits_option(tmp_path):
    headless, x = tiny(num_classes=0), clip()
    with torch.inference_mode():
        features = headless(x)
    out = vivit.optimize(headless, cache_dir=tmp_path)(x)
    assert out.shape == features.shape == (2, 64)
    assert (out - features).abs().max() < 1e-4
    model = tiny()
    with torch.inference_mode():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert (vivit.optimize(model, pre_logits=True, cache_dir=tmp_path)(x) - pre).abs().max() < 1e-4


def test_second_call_reads_the_cache_and_other_weights_convert_again(tmp_path, converted):
    cache, x = copy_of(converted, tmp_path), clip()
    second = vivit.optimize(tiny(), cache_dir=cache)
    assert "read from" in second.note
    with torch.inference_mode():
        assert (second(x) - tiny()(x)).abs().max() < 1e-4
    other = vivit.optimize(tiny(seed=1), cache_dir=cache)
    assert "converted" in other.note and "cached" in other.note
    entries = list(cache.iterdir())
    assert len(entries) == 2 and all(p.name.startswith("openvino-") for p in entries)
    manifest = json.loads((entries[0] / "manifest.json").read_text())
    assert {"weights", "structure", "input_size", "openvino", "files"} <= set(manifest)


def test_models_with_the_same_weights_but_another_variant_do_not_share_an_entry(tmp_path, converted):
    m1, cache = tiny("spacetime"), copy_of(converted, tmp_path)
    m4 = tiny("factorized_dot_product")
    m4.load_state_dict(m1.state_dict())  # Model 1 with avg pooling and Model 4 have identical weights
    x = clip()
    assert "read from" in vivit.optimize(m1, cache_dir=cache).note
    out4 = vivit.optimize(m4, cache_dir=cache)
    assert "converted" in out4.note
    with torch.inference_mode():
        assert (out4(x) - m4(x)).abs().max() < 1e-4


@pytest.mark.parametrize("damage", ["flip", "manifest"])
def test_damaged_cache_entry_is_rebuilt_not_used(tmp_path, converted, caplog, damage):
    model, x, cache = tiny(), clip(), copy_of(converted, tmp_path)
    (entry,) = cache.iterdir()
    if damage == "flip":
        with open(entry / "model.bin", "r+b") as f:  # same size: only the digest can tell
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        (entry / "manifest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"):
        again = vivit.optimize(model, cache_dir=cache)
    assert "damaged" in caplog.text and "converted" in again.note
    with torch.inference_mode():
        assert (again(x) - model(x)).abs().max() < 1e-4
    assert "read from" in vivit.optimize(model, cache_dir=cache).note


def test_unwritable_cache_runs_from_memory_and_says_so(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: simulate the refusal where it would happen
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(opt, "write_folder_atomic", refuse)
    else:
        folder.chmod(0o500)
    model, x = tiny(), clip()
    try:
        with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"):
            run = vivit.optimize(model, cache_dir=folder)
    finally:
        folder.chmod(0o700)
    assert run.backend == "openvino" and "not cached" in run.note
    assert "cannot write" in caplog.text and "VIVIT_CACHE" in caplog.text
    assert len(caplog.records) == 1
    with torch.inference_mode():
        assert (run(x) - model(x)).abs().max() < 1e-4


def test_missing_openvino_falls_back_to_torch_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` sees without the extra
    model, x = tiny(), clip()
    with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"):
        run = vivit.optimize(model)
        vivit.optimize(model)
    assert run.backend == "torch"
    assert len(caplog.records) == 1 and 'pip install "vivit[openvino]"' in caplog.text
    with torch.inference_mode():
        assert torch.equal(run(x), model(x))
    with pytest.raises(ImportError, match=r"vivit\[openvino\]"):
        vivit.optimize(model, backend="openvino")


class Zeta(torch.nn.Module):
    """An op OpenVINO has no conversion rule for."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(self.fc(x.mean((2, 3, 4))).abs() + 2, torch.tensor(2.0))


def test_model_openvino_cannot_convert_falls_back_or_names_the_op(tmp_path, caplog):
    model, x = Zeta(), clip()
    with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"):
        run = vivit.optimize(model, input_size=(3, 4, 32, 32), cache_dir=tmp_path)
    assert run.backend == "torch" and "special_zeta" in caplog.text and "torch" in caplog.text
    with torch.inference_mode():
        assert torch.equal(run(x), model(x))
    with pytest.raises(opt.BackendUnavailable, match="special_zeta"):
        vivit.optimize(model, backend="openvino", input_size=(3, 4, 32, 32), cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"input_size=\(C, T, H, W\)"):
        vivit.optimize(model, cache_dir=tmp_path)


def test_other_input_size_is_one_clear_error(converted):
    run = vivit.optimize(tiny(), cache_dir=converted)
    with pytest.raises(ValueError, match=r"B x 3x4x32x32"):
        run(torch.randn(1, 3, 8, 32, 32))


def test_cpu_without_native_bfloat16_runs_float32_and_says_so(converted, monkeypatch, caplog):
    monkeypatch.setattr(opt, "cpu_flags", lambda: {"avx2", "fma"})
    assert opt.auto_dtype("cpu") == torch.float32
    with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"):
        run = vivit.optimize(tiny(), torch.bfloat16, cache_dir=converted)
    assert run.dtype == torch.float32 and "no native bfloat16" in caplog.text
    monkeypatch.setattr(opt, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert opt.auto_dtype("cpu") == torch.bfloat16 and opt.auto_dtype("cuda") == torch.float32


def test_torch_path_leaves_the_model_unchanged():
    model, x = tiny(), clip()
    run = vivit.optimize(model, "bfloat16", backend="torch")
    assert run.backend == "torch" and next(model.parameters()).dtype == torch.float32
    out = run(x)
    assert out.dtype == torch.float32
    with torch.inference_mode():
        assert (out - model(x)).abs().max() < 0.05 * model(x).abs().max()
    with pytest.raises(ValueError, match="backend must be one of"):
        vivit.optimize(model, backend="onnx")
    with pytest.raises(ValueError, match="dtype must be one of"):
        vivit.optimize(model, "int8")


CONVERT = """
import sys, torch
sys.path.insert(0, {tests!r})
from optimize_cases import tiny, clip
import vivit
run = vivit.optimize(tiny(), cache_dir={cache!r})
torch.save(run(clip()), {out!r} + sys.argv[1])
"""


def test_two_processes_converting_at_once_leave_one_whole_entry(tmp_path):
    cache = tmp_path / "cache"
    code = CONVERT.format(tests=str(ROOT / "tests"), cache=str(cache), out=str(tmp_path / "out"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert torch.equal(torch.load(tmp_path / "out0"), torch.load(tmp_path / "out1"))
    entries = list(cache.iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # the loser's temporary folder is gone
    assert "read from" in vivit.optimize(tiny(), cache_dir=cache).note


def test_import_vivit_does_not_import_openvino():
    code = "import sys, vivit; print('openvino' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "False"


def test_cli_dtype_auto_picks_bfloat16_only_where_the_cpu_has_it(monkeypatch, capsys):
    from vivit.cli import resolve_dtype

    monkeypatch.setattr(opt, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert resolve_dtype("auto", None, "classify") == "bfloat16"
    assert "--dtype auto: bfloat16" in capsys.readouterr().err
    assert resolve_dtype("auto", "cuda", "classify") is None and resolve_dtype("float32", None, "classify") == "float32"
    monkeypatch.setattr(opt, "cpu_flags", lambda: {"avx2"})
    assert resolve_dtype("auto", None, "classify") is None and capsys.readouterr().err == ""


def test_cli_classify_says_which_backend_runs_first_and_second_time(tmp_path):
    pytest.importorskip("av")
    from tests.videos import write_video

    video = write_video(tmp_path / "clip.mp4", num_frames=20, height=40, width=56)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIVIT_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "vivit", "classify", str(video), "--model", "vivit_motion", "--views", "1x1",
               "--json"]
    runs = [subprocess.run(command + extra, capture_output=True, text=True, env=env, timeout=300)
            for extra in ([], [], ["--backend", "torch", "--dtype", "float32"])]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first, second, torch_run = (run.stderr for run in runs)
    assert "vivit classify: backend openvino" in first and "converting the model to OpenVINO once" in first
    assert "vivit classify: backend openvino" in second and "read from" in second and "converting" not in second
    assert "vivit classify: backend torch" in torch_run and "float32" in torch_run
    labels = [json.loads(run.stdout)["top_k"][0]["label"] for run in runs]
    assert labels[0] == labels[1]


def test_no_cpu_device_in_openvino_falls_back_to_torch(monkeypatch, caplog):
    import openvino

    class NoCPU:
        available_devices = ["GPU"]

    monkeypatch.setattr(openvino, "Core", NoCPU)
    model, x = tiny(), clip()
    with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"):
        run = vivit.optimize(model)
    assert run.backend == "torch" and "no CPU device" in caplog.text and len(caplog.records) == 1
    with torch.inference_mode():
        assert torch.equal(run(x), model(x))
    with pytest.raises(opt.BackendUnavailable, match="no CPU device"):
        vivit.optimize(model, backend="openvino")
