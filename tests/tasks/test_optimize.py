"""vivit.optimize: OpenVINO outputs match torch, the cache key covers everything the graph depends on, OpenVINO and
torch share one process, the conversion is cached safely, every fault falls back or says so.

These tests run in the main test process, as users run both runtimes in one."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vivit
from vivit.tasks import optimize as opt

pytest.importorskip("openvino", reason='OpenVINO is the optional extra vivit[openvino]: pip install "vivit[openvino]"')

VARIANTS = ["spacetime", "factorized_encoder", "factorized_self_attention", "factorized_dot_product"]
ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture(autouse=True, scope="module")
def _auto_is_the_fastest():
    """conftest pins "auto" to torch for the other tests; here it picks OpenVINO (module scope: before the module's
    other fixtures convert anything)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("VIVIT_BACKEND", raising=False)
        yield


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
    assert {"weights", "settings", "input_size", "source_dtype", "openvino", "files"} <= set(manifest)


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
    with pytest.raises(ValueError, match="decoder='pyav'"):  # one backend check: a decoder's name says decoder=
        vivit.optimize(model, backend="pyav")
    with pytest.raises(ValueError, match="dtype must be one of"):
        vivit.optimize(model, "float64")


TINY = """
import torch, vivit
def tiny(seed=0):
    torch.manual_seed(seed)
    model = vivit.ViViT(variant="spacetime", img_size=32, num_frames=4, embed_dim=64, depth=1, temporal_depth=1,
                        num_heads=4, mlp_dim=128, num_classes=10, global_pool="avg").eval()  # tests' tiny()
    torch.nn.init.normal_(model.head.weight)
    return model
clip = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
"""
CONVERT = TINY + """
import sys
run = vivit.optimize(tiny(), cache_dir={cache!r})
torch.save(run(clip), {out!r} + sys.argv[1])
"""


def test_two_processes_converting_at_once_leave_one_whole_entry(tmp_path):
    cache = tmp_path / "cache"
    code = CONVERT.format(cache=str(cache), out=str(tmp_path / "out"))
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
    class NoCPU:
        available_devices = ["GPU"]

    monkeypatch.setattr(opt, "openvino_core", NoCPU)
    model, x = tiny(), clip()
    with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"):
        run = vivit.optimize(model)
    assert run.backend == "torch" and "no CPU device" in caplog.text and len(caplog.records) == 1
    with torch.inference_mode():
        assert torch.equal(run(x), model(x))
    with pytest.raises(opt.BackendUnavailable, match="no CPU device"):
        vivit.optimize(model, backend="openvino")


def test_vivit_backend_pins_what_auto_picks(monkeypatch):
    """VIVIT_BACKEND=torch makes "auto" the torch path; a bad value is one clear error."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 5))
    monkeypatch.setenv("VIVIT_BACKEND", "torch")
    run = vivit.optimize(model)
    assert run.backend == "torch"
    x = torch.randn(2, 3, 2, 4, 4)
    torch.testing.assert_close(run(x), model(x))
    monkeypatch.setenv("VIVIT_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="backend must be one of"):
        vivit.optimize(model)


# --- the cache key: every setting that changes the forward is in it -------------------------------------------------

def merging_pair() -> tuple[vivit.ViViT, vivit.ViViT]:
    """The issue's reproduction at a tiny size: one model dense, one merging tokens, the same weights."""
    torch.manual_seed(0)
    dense = vivit.create_model("vivit_b_16x2", num_frames=4, img_size=48, depth=2, embed_dim=64, num_heads=4,
                               mlp_dim=128, num_classes=10).eval()
    torch.nn.init.normal_(dense.head.weight)
    merging = vivit.create_model("vivit_b_16x2", num_frames=4, img_size=48, depth=2, embed_dim=64, num_heads=4,
                                 mlp_dim=128, num_classes=10, token_merging=6).eval()
    merging.load_state_dict(dense.state_dict())
    return dense, merging


@pytest.mark.parametrize("order", ["merging first", "dense first"])
def test_a_merging_model_and_its_dense_twin_each_get_their_own_outputs(tmp_path, order):
    dense, merging = merging_pair()
    x = torch.randn(2, 3, 4, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = {"dense": dense(x), "merging": merging(x)}
    assert (want["dense"] - want["merging"]).abs().max() > 1e-2  # the two really compute different things
    models = {"dense": dense, "merging": merging}
    names = ["merging", "dense"] if order == "merging first" else ["dense", "merging"]
    for name in names:
        run = vivit.optimize(models[name], torch.float32, cache_dir=tmp_path)
        assert "converted" in run.note, name  # never the twin's entry
        assert (run(x) - want[name]).abs().max() < 1e-4, name
    assert len(list(tmp_path.iterdir())) == 2


def _pool_max(m: vivit.ViViT) -> None:
    m.reset_classifier(m.num_classes, global_pool="max")


def _eager(m: vivit.ViViT) -> None:
    for module in m.modules():
        if hasattr(module, "attn_impl"):
            module.attn_impl = "eager"


def _hook(m: vivit.ViViT) -> None:
    m.head.register_forward_hook(lambda module, args, out: out * 2)


def _attention_order(m: vivit.ViViT) -> vivit.ViViT:
    torch.manual_seed(0)
    flipped = vivit.ViViT(**{**m.model_args, "attention_order": "time_space"}).eval()
    flipped.load_state_dict(m.state_dict())
    return flipped


def model3() -> vivit.ViViT:
    torch.manual_seed(0)
    model = vivit.ViViT(variant="factorized_self_attention", img_size=32, num_frames=4, embed_dim=64, depth=1,
                        num_heads=4, mlp_dim=128, num_classes=10).eval()
    torch.nn.init.normal_(model.head.weight)
    return model


# Each flip changes what the forward computes (or how) and not the weights (the input size resamples the positional
# embeddings too): a key made of the weights, or of a hand list of settings, would serve one the other's graph.
FLIPS = {
    "token merging": (tiny, lambda m: m.set_token_merging(4)),
    "input size": (tiny, lambda m: m.set_input_size(num_frames=2)),
    "pooling": (tiny, _pool_max),
    "attention implementation": (tiny, _eager),
    "a forward hook": (tiny, _hook),
    "Model 3 attention order": (model3, _attention_order),
}


def _flipped(name: str) -> vivit.ViViT:
    make, flip = FLIPS[name]
    model = make()
    return flip(model) or model


@pytest.mark.parametrize("order", ["flipped first", "originals first"])
def test_each_setting_that_changes_the_forward_gets_its_own_entry(tmp_path, order):
    """Every flip and both originals in one cache: each model gets its own outputs, whichever was converted first."""
    originals = [("tiny", tiny()), ("model 3", model3())]
    flipped = [(name, _flipped(name)) for name in FLIPS]
    for name, model in (flipped + originals if order == "flipped first" else originals + flipped):
        x = torch.randn(2, 3, model.num_frames, *model.img_size, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            want = model(x)
        run = vivit.optimize(model, torch.float32, cache_dir=tmp_path)
        assert "converted" in run.note, name  # a new entry: never another model's
        assert (run(x) - want).abs().max() < 1e-4, name
    assert len(list(tmp_path.iterdir())) == len(originals) + len(flipped)


def test_the_key_covers_train_mode_source_dtype_and_versions():
    model = tiny()
    size = (3, 4, 32, 32)
    base = opt.cache_key(model, size, "2026.0")
    assert base == opt.cache_key(tiny(), size, "2026.0")  # the same model in another object: the same key
    assert opt.cache_key(tiny().train(), size, "2026.0") != base
    assert opt.cache_key(tiny().to(torch.bfloat16), size, "2026.0")["source_dtype"] == "bfloat16"
    assert opt.cache_key(model, size, "2026.1") != base
    assert opt.cache_key(model, (3, 4, 32, 48), "2026.0") != base


def test_the_key_is_the_same_in_another_process():
    """No memory address or object id reaches the key: a second process finds the first one's entry."""
    code = TINY + "\nfrom vivit.tasks.optimize import cache_key\nimport json\n"
    code += "print(json.dumps(cache_key(tiny(), (3, 4, 32, 32), 'v')))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert json.loads(out) == opt.cache_key(tiny(), (3, 4, 32, 32), "v")


# --- one process, both runtimes --------------------------------------------------------------------------------------

SIGNALS_AFTER_RELEASE = TINY + """
import gc, os, signal, subprocess, time
a = vivit.optimize(tiny(0), "float32", cache_dir={cache!r})
b = vivit.optimize(tiny(1), "float32", cache_dir={cache!r})
a(clip); b(clip)
del a; gc.collect()
del b; gc.collect()              # released oldest-first: with one ov.Core per model the thread kept a's unmapped stack
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
    raise SystemExit("SIGINT was not delivered")
except KeyboardInterrupt:
    pass
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3)), batch_size=2, num_workers=2)
assert sum(len(batch[0]) for batch in loader) == 8     # the workers' exits are SIGCHLDs
subprocess.run(["true"], check=True)
print("survived")
"""


def test_two_optimized_models_released_oldest_first_then_signals_do_not_crash(tmp_path):
    """The crash of issue 28: in a process of its own, so that a regression fails this test and not the suite."""
    code = SIGNALS_AFTER_RELEASE.format(cache=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "survived" in out.stdout, (out.returncode, out.stderr[-3000:])


class Clips(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        from vivit.transforms import EvalTransform

        frames = torch.randint(0, 256, (4, 40, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        return EvalTransform(resize_size=36, crop_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)(frames)


def test_user_flow_in_one_process_optimize_torch_workers_optimize_again(tmp_path):
    """In this (the test) process: OpenVINO and torch models, transforms and forked DataLoader workers, in turns."""
    runs = []
    for i in range(3):
        model, x = tiny(seed=i), clip()
        runs.append(vivit.optimize(model, "float32" if i % 2 else "bfloat16", cache_dir=tmp_path))
        with torch.inference_mode():
            plain = tiny(variant=VARIANTS[i % 4], seed=i)(x)  # a torch CPU model after OpenVINO ran
            assert plain.shape == (2, 10) and torch.isfinite(plain).all()
        loader = torch.utils.data.DataLoader(Clips(), batch_size=2, num_workers=2,
                                             multiprocessing_context="fork")
        batches = [batch for batch in loader]
        assert sum(len(b) for b in batches) == 4 and batches[0].shape[1:] == (3, 4, 32, 32)
        assert (runs[-1](batches[0]) - model(batches[0])).abs().max() < 0.05 * model(batches[0]).abs().max()
        if len(runs) == 2:
            del runs[0]  # oldest first
            gc.collect()
    del runs
    gc.collect()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


# --- no silent snapshot ----------------------------------------------------------------------------------------------

CHANGES = {
    "other weights": lambda m: m.load_state_dict(tiny(seed=5).state_dict()),
    "token merging": lambda m: m.set_token_merging(4),
    "input size": lambda m: m.set_input_size(num_frames=2),
    "head": lambda m: m.reset_classifier(3),
    "an optimizer step": lambda m: torch.optim.SGD(m.parameters(), lr=0.1).step() if _grads(m) else None,
}


def _grads(m: vivit.ViViT) -> bool:
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    return True


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_model_changed_after_optimize_is_refused_never_run_stale(converted, change):
    model, x = tiny(), clip()
    runs = [vivit.optimize(model, cache_dir=converted), vivit.optimize(model, "bfloat16", backend="torch")]
    assert runs[0].backend == "openvino" and "copy" in runs[1].note  # both run something other than the model
    for run in runs:
        run(x)
    CHANGES[change](model)
    for run in runs:
        with pytest.raises(opt.ModelChanged, match=r"changed after vivit.optimize .*vivit.optimize\(model\) again"):
            run(x)


def test_train_mode_alone_is_not_a_change_and_optimizing_again_follows_the_model(tmp_path):
    model, x = tiny(), clip()
    run = vivit.optimize(model, cache_dir=tmp_path)
    model.train()  # the optimized graph is the eval-mode forward, which is still the model's
    run(x)
    model.eval().set_token_merging(2)
    with pytest.raises(opt.ModelChanged, match="token_merging"):
        run(x)
    again = vivit.optimize(model, cache_dir=tmp_path)
    with torch.inference_mode():
        assert (again(x) - model(x)).abs().max() < 1e-4


def test_the_live_torch_path_has_nothing_to_go_stale():
    model, x = tiny(), clip()
    run = vivit.optimize(model, backend="torch")  # runs the model itself
    model.set_token_merging(2)
    with torch.inference_mode():
        assert torch.equal(run(x), model(x))


# --- a cache that trusts only itself ---------------------------------------------------------------------------------

@contextlib.contextmanager
def deadline(seconds: int):
    """A hang becomes a failure (SIGALRM), so a regression cannot stall the suite."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if p.name.startswith("openvino-")]
    return entry


def _fifo(entry: Path) -> None:
    (entry / "model.xml").unlink()
    os.mkfifo(entry / "model.xml", 0o644)


def _dev_zero(entry: Path) -> None:
    (entry / "model.xml").unlink()
    (entry / "model.xml").symlink_to("/dev/zero")


def _entry_link(entry: Path) -> None:
    real = entry.with_name("elsewhere")
    entry.rename(real)
    entry.symlink_to(real)


def _foreign(entry: Path) -> None:
    for path in [entry, *entry.iterdir()]:
        os.chown(path, 65534, 65534)


def _world_writable(entry: Path) -> None:
    entry.chmod(0o777)


UNTRUSTED = {"model.xml a FIFO": (_fifo, "not a regular file"), "model.xml -> /dev/zero": (_dev_zero, "symbolic link"),
             "entry a symlink": (_entry_link, "symbolic link"), "another user's entry": (_foreign, "belongs to user"),
             "mode 0777": (_world_writable, "other users can write")}


@pytest.mark.parametrize("case", list(UNTRUSTED))
def test_untrusted_entries_are_never_read(tmp_path, converted, caplog, case):
    if case == "another user's entry" and os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    cache = copy_of(converted, tmp_path)
    entry = _entry(cache)
    damage, reason = UNTRUSTED[case]
    damage(entry)
    model, x = tiny(), clip()
    with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"), deadline(120):
        run = vivit.optimize(model, cache_dir=cache)
    assert "not using the cached OpenVINO model" in caplog.text and reason in caplog.text, caplog.text
    assert "converted" in run.note and "not cached" in run.note
    with torch.inference_mode():
        assert (run(x) - model(x)).abs().max() < 1e-4
    assert os.path.lexists(entry)  # not ours to remove: the message says to


def test_another_models_entry_under_this_name_is_not_run(tmp_path, caplog):
    x = clip()
    vivit.optimize(tiny(seed=1), cache_dir=tmp_path / "other")
    vivit.optimize(tiny(), cache_dir=tmp_path / "cache")
    mine, other = _entry(tmp_path / "cache"), _entry(tmp_path / "other")
    shutil.rmtree(mine)
    shutil.copytree(other, mine)  # seed 1's whole, self-consistent entry under seed 0's name
    with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"):
        run = vivit.optimize(tiny(), cache_dir=tmp_path / "cache")
    assert "another model's" in caplog.text and "converted" in run.note
    with torch.inference_mode():
        assert (run(x) - tiny()(x)).abs().max() < 1e-4


def test_a_planted_ir_of_another_input_size_is_refused_before_compile(tmp_path, converted, caplog):
    cache = copy_of(converted, tmp_path)
    entry = _entry(cache)
    short = tiny()
    short.set_input_size(num_frames=2)
    vivit.optimize(short, cache_dir=tmp_path / "short")
    planted = _entry(tmp_path / "short")
    manifest = json.loads((entry / "manifest.json").read_text())
    for f in ("model.xml", "model.bin"):
        shutil.copyfile(planted / f, entry / f)
        manifest["files"][f] = opt.file_sha256(entry / f)  # a manifest that agrees with the planted files
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"):
        run = vivit.optimize(tiny(), cache_dir=cache)
    assert "damaged" in caplog.text and "converted" in run.note
    x = clip()
    with torch.inference_mode():
        assert (run(x) - tiny()(x)).abs().max() < 1e-4


def test_a_full_disk_while_caching_is_one_line_and_leaves_no_entry(tmp_path, caplog):
    import resource

    model, x = tiny(), clip()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with caplog.at_level(logging.WARNING, logger="vivit.tasks.optimize"):
            run = vivit.optimize(model, cache_dir=tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert "not cached" in run.note and len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "\n" not in message and "cannot write the converted model" in message
    assert list(tmp_path.iterdir()) == []  # no entry, no hidden half-written folder
    with torch.inference_mode():
        assert (run(x) - model(x)).abs().max() < 1e-4


def test_the_cache_keeps_the_recently_used_entries_within_its_bound(tmp_path, monkeypatch):
    vivit.optimize(tiny(seed=0), cache_dir=tmp_path)
    size = sum(f.stat().st_size for f in _entry(tmp_path).iterdir())
    monkeypatch.setenv("VIVIT_OPTIMIZE_CACHE_GB", str(2.5 * size / 1e9))  # room for two entries
    vivit.optimize(tiny(seed=1), cache_dir=tmp_path)
    first, second = sorted(tmp_path.iterdir(), key=lambda p: (p / "manifest.json").stat().st_mtime)
    os.utime(first / "manifest.json", (1, 1))
    os.utime(second / "manifest.json", (2, 2))
    assert "read from" in vivit.optimize(tiny(seed=0), cache_dir=tmp_path).note  # seed 0 is now the recent one
    vivit.optimize(tiny(seed=2), cache_dir=tmp_path)
    left = set(tmp_path.iterdir())
    assert len(left) == 2 and first in left and second not in left
    monkeypatch.setenv("VIVIT_OPTIMIZE_CACHE_GB", "lots")
    with pytest.raises(ValueError, match="VIVIT_OPTIMIZE_CACHE_GB must be a size in gigabytes"):
        vivit.optimize(tiny(seed=3), cache_dir=tmp_path)


THREADS = TINY + """
import threading
start = threading.Barrier(3)
def infer(seed):  # one callable per thread, built in it at the same moment as the other's (the guide's advice)
    start.wait()
    run = vivit.optimize(tiny(seed), "float32", cache_dir={cache!r})
    for _ in range(100):
        run(clip)
def train():
    model = tiny(5).train()
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)
    start.wait()
    for _ in range(20):
        sgd.zero_grad()
        model(clip).sum().backward()
        sgd.step()
threads = [threading.Thread(target=infer, args=(seed,)) for seed in range(2)] + [threading.Thread(target=train)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("joined")
"""


def test_one_optimized_per_thread_next_to_torch_training_finishes(tmp_path):
    """Two OpenVINO threads and a torch training thread, a bounded number of calls, a deadline."""
    out = subprocess.run([sys.executable, "-c", THREADS.format(cache=str(tmp_path))], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=400)
    assert out.returncode == 0 and "joined" in out.stdout, out.stderr[-3000:]


# --- int8 ------------------------------------------------------------------------------------------------------------

def test_int8_quantizes_once_per_calibration_set_and_stays_close(tmp_path):
    pytest.importorskip("nncf", reason='int8 is the extra vivit[int8]: pip install "vivit[int8]"')
    from vivit.data.synthetic import make_dataset

    def scaled(seed: list[int], n: int) -> torch.Tensor:
        videos, _ = make_dataset(n, seed)
        return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() * (2 / 255) - 1

    model = vivit.create_model("vivit_motion", pretrained=True)  # trained weights: int8 on random ones means little
    clips, x = scaled([0, 3], 32), scaled([0, 1], 20)
    with torch.inference_mode():
        want = model(x)
    run = vivit.optimize(model, "int8", calibration=clips, cache_dir=tmp_path)
    assert run.backend == "openvino" and run.dtype == torch.int8 and "quantized" in run.note
    got = run(x)
    # int8 is an approximation: the same answers and close logits, not within 1e-4 (benchmarks/int8.py measures it)
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.9
    assert torch.nn.functional.cosine_similarity(got, want).mean() > 0.95
    assert "read from" in vivit.optimize(model, "int8", calibration=clips, cache_dir=tmp_path).note
    assert "read from" in vivit.optimize(model, "float32", cache_dir=tmp_path).note  # the float IR it started from
    other = vivit.optimize(model, "int8", calibration=list(clips[:16].split(8)), cache_dir=tmp_path)
    assert "quantized" in other.note  # another calibration set is another entry


def test_int8_without_the_extra_or_calibration_is_one_clear_error(monkeypatch):
    model, clips = tiny(), torch.zeros(2, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="needs calibration=clips"):
        vivit.optimize(model, "int8")
    with pytest.raises(ValueError, match=r"calibration clips must be \(N, 3, 4, 32, 32\)"):
        vivit.optimize(model, "int8", calibration=torch.zeros(2, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="runs through OpenVINO on the CPU"):
        vivit.optimize(model, "int8", calibration=clips, backend="torch")
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ImportError, match=r"vivit\[int8\]"):
        vivit.optimize(model, "int8", calibration=clips)


def test_a_model_skipping_static_tubelets_runs_in_torch_never_a_fixed_token_graph(cache):
    """Each clip keeps its own number of tokens: a converted graph would bake one clip's kept tokens into every call."""
    model = tiny()
    model.set_drop_static(0.1)
    x = clip()
    x[:, :, 2:] = x[:, :, :2]  # the second tubelet repeats the first: static, skipped
    with pytest.raises(ValueError, match="drop_static.*backend='torch'"):
        vivit.optimize(model, torch.float32, backend="openvino", cache_dir=cache)
    fast = vivit.optimize(model, torch.float32, cache_dir=cache)  # auto: torch, said once
    assert fast.backend == "torch"
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=0)


def test_int8_cache_entry_is_keyed_by_nncf_version_and_smooth_quant(tmp_path, monkeypatch):
    nncf = pytest.importorskip("nncf")
    model, clips = tiny(), clip(4)
    assert "quantized" in vivit.optimize(model, "int8", calibration=clips, cache_dir=tmp_path).note
    again = vivit.optimize(model, "int8", calibration=clips, cache_dir=tmp_path)
    assert "read from" in again.note
    assert again.calibration == opt._clips_digest(opt._calibration_clips(clips, (3, 4, 32, 32)))
    assert "quantized" in vivit.optimize(model, "int8", calibration=clips, cache_dir=tmp_path, smooth_quant=-1).note
    monkeypatch.setattr(nncf, "__version__", "0.0.1")  # another NNCF quantizes another way: not the cached one
    assert "quantized" in vivit.optimize(model, "int8", calibration=clips, cache_dir=tmp_path).note


def test_calibration_clips_are_the_inference_views_of_videos_spread_over_the_listing(tmp_path, caplog):
    pytest.importorskip("av")
    from tests.videos import write_video
    from vivit.data.video import ViewSampler

    model = tiny()
    names = [write_video(tmp_path / f"v{i}.mp4", num_frames=10 + i, height=40, width=48).name for i in range(4)]
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "list.csv").write_text("broken.mp4\n" + "".join(f"{n}\n" for n in names))
    sampler = ViewSampler.for_model(model, "2x1")
    # 3 clips at 2 views per video: 2 videos spread over the 5 rows (rows 0 and 2); row 0 is unreadable, so row 1
    # (the first of the rest) stands in for it
    with caplog.at_level(logging.WARNING, logger="vivit.data.datasets"):  # EvalVideos says which video it skipped
        got = opt.calibration_clips(tmp_path / "list.csv", model, "2x1", 3)
    want = torch.cat([sampler(tmp_path / names[1]), sampler(tmp_path / names[0])])[:3]
    assert got.shape == (3, 3, 4, 32, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert any("broken.mp4" in r.message for r in caplog.records)
    assert len(opt.calibration_clips(tmp_path / "list.csv", model, "2x1")) == 8  # bounded by the listing: 4 x 2
    most = opt.MAX_CALIBRATION_BYTES // (4 * 3 * 4 * 32 * 32)
    with pytest.raises(ValueError, match=f"at most {most}"):
        opt.calibration_clips(tmp_path / "list.csv", model, "2x1", most + 1)
    (tmp_path / "bad.csv").write_text("broken.mp4\n")
    with pytest.raises(ValueError, match="none of its 1 videos could be read"):
        opt.calibration_clips(tmp_path / "bad.csv", model, "2x1")
