"""load_pretrained: format detection, conversion on the fly, resampling, strict head handling, hostile files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vivit
from tests.conftest import TINY
from tests.model.test_model import TINY_VARIANTS
from vivit.model.embed import resample_pos_embed
from vivit.weights.load import load_pretrained
from vivit.weights.read import detect_format

SNAPSHOT = __import__("pathlib").Path(__file__).parents[1] / "snapshots" / "state_dict_keys.json"


def tiny(variant="spacetime", **kwargs):
    args = dict(variant=variant, img_size=32, num_frames=4, tubelet_size=(2, 16, 16), embed_dim=16, depth=1,
                num_heads=4, mlp_dim=32, num_classes=3, temporal_depth=1)
    args.update(kwargs)
    model = vivit.ViViT(**args)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def clip(model, batch=1):
    return torch.randn(batch, model.in_chans, model.num_frames, *model.img_size)


# --------------------------------------------------------------------------------------------- formats
def test_detects_every_format(tmp_path, golden_dir):
    model = tiny()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save(model.state_dict(), tmp_path / "w_legacy.pt", _use_new_zipfile_serialization=False)
    model.save_pretrained(tmp_path / "saved")
    checkpoints = golden_dir / "scenic" / "checkpoints"
    assert detect_format(tmp_path / "w.safetensors") == "safetensors"
    assert detect_format(tmp_path / "w.pt") == "torch"
    assert detect_format(tmp_path / "w_legacy.pt") == "torch"
    assert detect_format(tmp_path / "saved") == "vivit-folder"
    assert detect_format(checkpoints / "vivit_spacetime_A_optax" / "checkpoint_1000") == "scenic"
    assert detect_format(checkpoints / "vivit_spacetime_A_optax") == "scenic"
    assert detect_format(golden_dir / "scenic" / "vivit_spacetime_A.npz") == "npz"


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt", "w_legacy.pt", "saved"])
def test_round_trip_through_every_local_format_gives_identical_logits(tmp_path, name):
    model = tiny("factorized_encoder")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "w_legacy.pt",
               _use_new_zipfile_serialization=False)
    model.save_pretrained(tmp_path / "saved")
    fresh = tiny("factorized_encoder")
    load_pretrained(fresh, tmp_path / name)
    x = clip(model, 2)
    torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("stem", ["vivit_spacetime_A_optax", "vivit_factorized_encoder_A_flax_optim"])
def test_reference_checkpoint_files_load_into_a_matching_model(golden_dir, stem):
    name = stem.rsplit("_A_", 1)[0] + "_A"
    sidecar = json.loads((golden_dir / "scenic" / f"{name}.json").read_text())
    arrays = np.load(golden_dir / "scenic" / f"{name}.npz")
    reference = vivit.convert.from_scenic({k: arrays[k] for k in arrays.files if k.startswith("params/")},
                                          sidecar["scenic_config"], img_size=16)
    model = vivit.ViViT(**{**reference.model_args})
    load_pretrained(model, golden_dir / "scenic" / "checkpoints" / stem / "checkpoint_1000")
    video = torch.from_numpy(arrays["input"]).permute(0, 4, 1, 2, 3)
    np.testing.assert_allclose(model.eval()(video).detach().numpy(), arrays["logits"], atol=1e-5, rtol=1e-5)


def test_transformers_folder_loads_with_its_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 16, 16], hidden_size=16,
                                      num_hidden_layers=1, num_attention_heads=4, intermediate_size=32, num_labels=3,
                                      hidden_act="gelu_fast", layer_norm_eps=1e-6)
    hf = transformers.VivitForVideoClassification(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = tiny()
    load_pretrained(model, tmp_path / "hf")
    x = clip(model, 2)
    with torch.no_grad():
        expected = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ head and resampling
def test_new_num_classes_drops_exactly_the_head(tmp_path):
    source = tiny()
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = tiny(num_classes=11)
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("head.")}
    load_pretrained(target, tmp_path / "w.pt")
    for key, value in source.state_dict().items():
        if key.startswith("head."):
            assert torch.equal(target.state_dict()[key], head_before[key])  # left as the model had it
        else:
            torch.testing.assert_close(target.state_dict()[key], value)
    headless = tiny(num_classes=0)
    load_pretrained(headless, tmp_path / "w.pt")
    x = clip(source)
    torch.testing.assert_close(headless(x), source.forward_head(source.forward_features(x), pre_logits=True))


def test_other_missing_keys_are_named(tmp_path):
    state = tiny().state_dict()
    del state["encoder.blocks.0.mlp.fc1.bias"]
    state["encoder.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"encoder\.blocks\.0\.mlp\.fc1\.bias") as err:
        load_pretrained(tiny(), tmp_path / "w.pt")
    assert "encoder.extra" in str(err.value)
    model = tiny()
    load_pretrained(model, tmp_path / "w.pt", strict=False)  # loads what fits, warns


def test_weights_of_another_width_are_refused(tmp_path):
    torch.save(tiny(embed_dim=32).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="shape"):
        load_pretrained(tiny(), tmp_path / "w.pt")


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_positional_embeddings_are_resampled_to_new_frames_and_size(tmp_path, variant):
    source = tiny(variant, num_frames=8, img_size=(32, 48))  # grid 4 x 2 x 3
    source.save_pretrained(tmp_path / "saved")
    target = tiny(variant, num_frames=12, img_size=(64, 48))  # grid 6 x 4 x 3
    load_pretrained(target, tmp_path / "saved")
    assert target(clip(target)).shape == (1, 3)
    key = "encoder.spatial.pos_embed" if variant == "factorized_encoder" else "encoder.pos_embed"
    old, new = ((2, 3), (4, 3)) if variant == "factorized_encoder" else ((4, 2, 3), (6, 4, 3))
    prefix = int(source.global_pool == "token")
    expected = resample_pos_embed(source.state_dict()[key], old, new, prefix)
    torch.testing.assert_close(target.state_dict()[key], expected)


def test_resampling_a_bare_state_dict_infers_the_square_grid(tmp_path):
    torch.save(tiny(num_frames=4, img_size=32).state_dict(), tmp_path / "w.pt")
    target = tiny(num_frames=4, img_size=64)
    load_pretrained(target, tmp_path / "w.pt")
    assert target.state_dict()["encoder.pos_embed"].shape == (1, 1 + 2 * 4 * 4, 16)


# ------------------------------------------------------------------------------------------- hostile files
class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/vivit_pwned_marker",))


def test_malicious_pickle_never_executes(tmp_path):
    marker = __import__("pathlib").Path("/tmp/vivit_pwned_marker")
    marker.unlink(missing_ok=True)
    torch.save({"weights": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        load_pretrained(tiny(), tmp_path / "evil.pt")
    with (tmp_path / "evil_raw.pkl").open("wb") as f:
        pickle.dump(_Exploit(), f, protocol=2)
    with pytest.raises(ValueError, match="evil_raw.pkl"):
        load_pretrained(tiny(), tmp_path / "evil_raw.pkl")
    assert not marker.exists()


def test_pickle_refusal_names_the_global_and_never_suggests_weights_only_false(tmp_path):
    torch.save({"weights": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="posix.system|os.system") as err:
        load_pretrained(tiny(), tmp_path / "evil.pt")
    assert "weights_only" not in str(err.value) and "Re-running" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("random.bin", bytes(range(7, 200)) * 3, "not a weights file"),
        ("empty.pt", b"", "not a weights file"),
        ("notes.json", b'{"a": 1}', "not a weights file"),
    ],
)
def test_foreign_files_get_a_clear_error_naming_them(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        load_pretrained(tiny(), tmp_path / name)
    assert name in str(err.value)


def test_truncated_files_get_a_clear_error(tmp_path):
    save_file(tiny().state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(tiny().state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=name):
            load_pretrained(tiny(), tmp_path / name)


def test_missing_path_and_image_vit(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_pretrained(tiny(), tmp_path / "nope.pt")
    image_vit = {"patch_embed.proj.weight": torch.zeros(16, 3, 16, 16), "blocks.0.norm1.weight": torch.zeros(16)}
    torch.save(image_vit, tmp_path / "vit.pt")
    with pytest.raises(ValueError, match="vivit.inflate"):
        load_pretrained(tiny(), tmp_path / "vit.pt")


def test_model_without_default_weights_needs_a_source():
    with pytest.raises(ValueError, match="no default weights"):
        load_pretrained(vivit.create_model("vivit_ti_16x2", **TINY))


# ----------------------------------------------------------------------------------- non-finite weights
def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path):
    model = tiny()
    state = model.state_dict()
    state["encoder.blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    state["head.bias"][1] = float("inf")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="NaN or infinite") as err:
        load_pretrained(tiny(), tmp_path / "nan.pt")
    message = str(err.value)
    assert "nan.pt" in message and "encoder.blocks.0.attn.qkv.weight (1 of" in message and "head.bias (1 of" in message
    loaded = load_pretrained(tiny(), tmp_path / "nan.pt", allow_non_finite=True)  # the explicit opt-out
    assert torch.isnan(loaded.encoder.blocks[0].attn.qkv.weight[0, 0])


def test_from_scenic_refuses_non_finite_parameters(golden_dir):
    from tests.weights.test_checkpoint import golden_params

    sidecar = json.loads((golden_dir / "scenic" / "vivit_spacetime_A.json").read_text())
    params = golden_params(golden_dir, "vivit_spacetime_A_optax")
    params["Transformer/encoder_norm/scale"] = params["Transformer/encoder_norm/scale"].copy()
    params["Transformer/encoder_norm/scale"][3] = np.nan
    with pytest.raises(ValueError, match=r"encoder.norm.weight \(1 of"):
        vivit.convert.from_scenic(params, sidecar["scenic_config"], img_size=(16, 16))
    vivit.convert.from_scenic(params, sidecar["scenic_config"], img_size=(16, 16), allow_non_finite=True)


# ------------------------------------------------------------------------------------- hostile archives
def _npy(shape, descr="<f4"):
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize(("entry", "match"), [
    (_npy((2,), "|O") + b"\x80\x04N.", "holds Python objects"),
    (_npy((1000,)) + bytes(100), r"declares shape \(1000,\) of float32 \(4000 bytes\) but holds 100 bytes"),
    (_npy((1 << 40,)) + bytes(64), r"4398046511104 bytes\) but holds 64 bytes"),  # 4 TiB, never allocated
    (b"\x93NUMPY garbage", "not a valid npy array"),
])
def test_hostile_npz_entries_are_refused_from_their_headers_naming_the_file(tmp_path, entry, match):
    import zipfile

    path = tmp_path / "params.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("params/embedding/kernel.npy", entry)
    with pytest.raises(ValueError, match=match) as err:
        load_pretrained(tiny(), path)
    assert str(path) in str(err.value) and "params/embedding/kernel" in str(err.value)


_PEAK = """
import resource, sys, time
import torch, vivit
model = vivit.ViViT(variant="spacetime", img_size=32, num_frames=4, tubelet_size=(2, 16, 16), embed_dim=16, depth=1,
                    num_heads=4, mlp_dim=32, num_classes=3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[1:]:
    start = time.monotonic()
    try:
        vivit.load_pretrained(model, path)
        outcome = "loaded"
    except ValueError as err:
        outcome = str(err)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
    print(json.dumps([round(time.monotonic() - start, 2), grown, outcome]))
""".replace("import resource", "import json, resource")


def _peaks(*paths):
    """(seconds, peak RSS growth in MiB, outcome) of loading each path into a tiny model, in one fresh process."""
    import subprocess
    import sys

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _PEAK, *map(str, paths)], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.strip().splitlines()[-len(paths):]]


def test_zip_and_safetensors_bombs_are_refused_from_their_headers_with_flat_memory(tmp_path):
    """Once: a 2 MB npz reached 2.8 GB; 1.5 M empty safetensors tensors took 31 s and 2.9 GB."""
    import struct
    import zipfile

    bomb = tmp_path / "bomb.npz"  # 256 MiB of zeros deflated to ~250 KB
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open("params/embedding/kernel.npy", "w", force_zip64=True) as f:
        f.write(_npy((64 << 20,)))
        zeros = bytes(16 << 20)
        for _ in range(16):
            f.write(zeros)
    assert bomb.stat().st_size < (4 << 20)
    many = tmp_path / "many.safetensors"  # more empty tensors than any model has
    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(70_000)})
    many.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    huge = tmp_path / "huge.safetensors"  # a 100 MB header (a sparse file: costs no disk)
    with huge.open("wb") as f:
        f.write(struct.pack("<Q", 100_000_000) + b'{"')
        f.truncate(8 + 100_000_000)
    results = _peaks(bomb, many, huge)
    for path, match, (seconds, mib, outcome) in zip(
            (bomb, many, huge), ("MiB of arrays.*zip bomb", "declares 70000 tensors", "header of 100000000 bytes"),
            results, strict=True):
        assert __import__("re").search(match, outcome) and str(path) in outcome, outcome
        # memory is the bound; the time limit is only far above the expected ~0.1 s (the old bug took 31 s)
        assert mib < 64 and seconds < 20, (path.name, mib, seconds)  # reading the bomb alone would take 256+ MiB


# -------------------------------------------------------------------------------------- key snapshots
def _keys(variant):
    extra = {"factorized_encoder": dict(temporal_depth=1)}.get(variant, {})
    model = vivit.ViViT(variant=variant, img_size=32, num_frames=4, embed_dim=16, depth=1, num_heads=4, mlp_dim=32,
                        num_classes=3, representation_size=8, **extra)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_state_dict_keys_match_the_snapshot():
    # Keys are API (house rule 8): a rename needs a converter entry and a CHANGELOG line, then a new snapshot.
    snapshot = json.loads(SNAPSHOT.read_text())
    for variant in TINY_VARIANTS:
        assert _keys(variant) == snapshot[variant], variant


def test_load_pretrained_without_source_reloads_the_folder_the_model_came_from(tmp_path):
    source = tiny()
    torch.nn.init.normal_(source.head.weight)
    source.save_pretrained(str(tmp_path / "saved"))
    model = vivit.create_model(f"local-dir:{tmp_path / 'saved'}", pretrained=False)
    load_pretrained(model)  # no source: the folder create_model read, not a registry tag
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_frame_sampling_grid_of_saved_args_matches_the_embedding():
    from vivit.weights.fit import grid_of_args

    for img_size in (32, 24):  # 24: 16-pixel patch rows straddle frames, the tokens form one tall image
        args = dict(variant="spacetime", img_size=img_size, num_frames=8, tubelet_size=(1, 16, 16),
                    embedding="frame_sampling", n_sampled_frames=3, embed_dim=16, depth=1, num_heads=2, mlp_dim=32)
        assert grid_of_args(args) == vivit.ViViT(**args).grid_size


def test_a_shipped_file_that_does_not_match_its_release_digest_is_refused(monkeypatch):
    import dataclasses

    from vivit.weights import load

    cfg = load.PRETRAINED["vivit_motion.synthetic"]
    assert cfg.sha256 and vivit.create_model("vivit_motion", pretrained=True) is not None  # the real digest matches
    monkeypatch.setitem(load.PRETRAINED, cfg.name, dataclasses.replace(cfg, sha256="0" * 64))
    with pytest.raises(RuntimeError, match="does not have its release sha256 0000"):
        vivit.create_model("vivit_motion", pretrained=True)
