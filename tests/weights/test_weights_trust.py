"""Hostile or mismatched inputs on the weights path (issue 24): each is one clear error naming the file and field,
refused before anything is built; model cards claim an accuracy only for the weights it was measured on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vivit
from tests.hub_server import HubServer
from tests.weights.test_hub import run_hub
from vivit.weights import publish

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = dict(variant="spacetime", img_size=32, num_frames=4, tubelet_size=(2, 16, 16), embed_dim=32, depth=1,
            num_heads=2, mlp_dim=64, num_classes=3)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return publish.save_pretrained(vivit.ViViT(**TINY).eval(), tmp_path / "saved", label_names=["a", "b", "c"])


def edit_config(folder: Path, **changes: object) -> Path:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if key.startswith("model_args."):
            config["model_args"][key.split(".", 1)[1]] = value
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return path


HOSTILE_ARGS = [
    ("depth", 10**6), ("num_classes", 10**9), ("embed_dim", 10**7), ("img_size", 10**7), ("num_frames", 10**6),
    ("temporal_depth", 10**6), ("mlp_dim", 10**9), ("num_heads", "2"), ("depth", True), ("depth", 1.5),
    ("tubelet_size", [0, 16, 16]), ("img_size", [32]),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE_ARGS)
def test_hostile_model_args_are_refused_naming_file_and_field(saved: Path, field: str, value: object) -> None:
    config = edit_config(saved, **{f"model_args.{field}": value})
    for load in (lambda: vivit.create_model(f"local-dir:{saved}", pretrained=True),
                 lambda: vivit.load_pretrained(vivit.ViViT(**TINY), saved)):
        with pytest.raises(ValueError, match=f"model_args.{field}") as info:
            load()
        assert str(config) in str(info.value)


def test_sizes_that_pass_alone_but_make_a_huge_model_are_refused_before_building(saved: Path) -> None:
    # every field within its bound, together ~1e12 parameters
    config = edit_config(saved, **{"model_args.depth": 256, "model_args.embed_dim": 16384, "model_args.num_heads": 16,
                                   "model_args.mlp_dim": 65536})
    with pytest.raises(ValueError, match="parameters") as info:
        vivit.create_model(f"local-dir:{saved}")
    assert str(config) in str(info.value)


def test_unknown_model_args_key_is_refused_naming_it(saved: Path) -> None:
    config = edit_config(saved, **{"model_args.depht": 2})
    with pytest.raises(ValueError, match="unknown key.*depht") as info:
        vivit.create_model(f"local-dir:{saved}")
    assert str(config) in str(info.value)


@pytest.mark.parametrize("data", [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
                                  b"{ not json", b"\xff\xfe garbage"])
def test_deeply_nested_or_garbage_config_is_one_error_naming_the_file(saved: Path, data: bytes) -> None:
    (saved / "config.json").write_bytes(data)
    for load in (lambda: vivit.create_model(f"local-dir:{saved}", pretrained=True),
                 lambda: vivit.load_pretrained(vivit.ViViT(**TINY), saved)):
        with pytest.raises(ValueError) as info:
            load()
        assert str(saved / "config.json") in str(info.value)


@pytest.mark.parametrize(("labels", "problem"), [
    ("abc", "list of strings"), ([1, 2, 3], "list of strings"), (["a", "b\n# injected", "c"], r"label_names\[1\]"),
    (["a", "b"], "has 2 names but num_classes is 3"), (["a", "b", "x" * 1000], "label_names"),
])
def test_label_names_are_validated(saved: Path, labels: object, problem: str) -> None:
    config = edit_config(saved, label_names=labels)
    with pytest.raises(ValueError, match=problem) as info:
        vivit.create_model(f"local-dir:{saved}", pretrained=True)
    assert str(config) in str(info.value)


def test_hostile_hub_config_is_refused_naming_the_repo(tmp_path: Path, saved: Path, monkeypatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    edit_config(saved, **{"model_args.depth": 10**6})
    code = 'print(json.dumps(attempt(vivit.create_model, "hf-hub:vivit-test/tiny", pretrained=True)))'
    with HubServer(repos={"vivit-test/tiny": saved}) as server:
        result = run_hub("import vivit\n" + code, server, tmp_path / "hf")
    assert result["error"] == "ValueError"
    assert "hf-hub:vivit-test/tiny config.json" in result["message"] and "model_args.depth" in result["message"]
    assert not any(path.endswith("model.safetensors") for _, path in server.requests)  # refused before the weights


# ------------------------------------------------------------------------------------------ another variant
def test_weights_of_another_variant_name_the_file_not_a_key_error(tmp_path: Path) -> None:
    fe = vivit.ViViT(**{**TINY, "variant": "factorized_encoder", "temporal_depth": 1})
    torch.save(fe.state_dict(), tmp_path / "fe.pt")
    with pytest.raises(ValueError, match="does not fit this spacetime model") as info:
        vivit.load_pretrained(vivit.ViViT(**TINY), tmp_path / "fe.pt")
    assert str(tmp_path / "fe.pt") in str(info.value)


def test_cli_convert_with_another_architecture_is_one_line(tmp_path: Path) -> None:
    motion = vivit.create_model("vivit_motion", pretrained=True)
    torch.save(motion.state_dict(), tmp_path / "motion.pt")
    proc = subprocess.run([sys.executable, "-m", "vivit", "convert", str(tmp_path / "motion.pt"), str(tmp_path / "o"),
                           "--arch", "vivit_ti_16x2"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and str(tmp_path / "motion.pt") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------- model cards
def card_of(model: vivit.ViViT, folder: Path) -> str:
    return (model.save_pretrained(folder) / "README.md").read_text()


def test_a_card_claims_the_accuracy_only_for_the_measured_weights(tmp_path: Path) -> None:
    assert "99.6" in card_of(vivit.create_model("vivit_motion", pretrained=True), tmp_path / "released")
    assert "99.6" not in card_of(vivit.create_model("vivit_motion", pretrained=False), tmp_path / "random")
    tuned = vivit.create_model("vivit_motion", pretrained=True)
    with torch.no_grad():
        tuned.head.bias.add_(1.0)  # any in-place change, as an optimizer step makes
    assert "99.6" not in card_of(tuned, tmp_path / "tuned")
    resampled = vivit.create_model("vivit_motion", pretrained=True, num_frames=8)
    assert "99.6" not in card_of(resampled, tmp_path / "resampled")


# ---------------------------------------------------------------------------------------- set_input_size
@pytest.mark.parametrize(("kwargs", "error"), [
    (dict(img_size=(10**6, 10**6)), ValueError), (dict(img_size=(16, 10**7)), ValueError),
    (dict(img_size=(8192, 8192), num_frames=8192), ValueError),  # in bounds, but ~1e9 tokens
    (dict(img_size="64"), TypeError), (dict(img_size=3.5), TypeError), (dict(img_size=True), TypeError),
    (dict(num_frames=2.7), TypeError), (dict(num_frames=0), ValueError), (dict(img_size=8), ValueError),
])
def test_set_input_size_refuses_bad_sizes_and_changes_nothing(kwargs: dict, error: type) -> None:
    model = vivit.ViViT(**TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grid, args = model.grid_size, dict(model.model_args)
    with pytest.raises(error, match="set_input_size|smaller than one tubelet"):
        model.set_input_size(**kwargs)
    assert model.grid_size == grid and model.model_args == args
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_set_input_size_failing_midway_restores_every_positional_embedding(monkeypatch) -> None:
    model = vivit.ViViT(**{**TINY, "variant": "factorized_encoder", "temporal_depth": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def out_of_memory(grid):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(model.encoder.temporal, "set_grid", out_of_memory)  # the spatial one has already changed
    with pytest.raises(torch.OutOfMemoryError):
        model.set_input_size(img_size=64, num_frames=8)
    assert model.grid_size == (2, 2, 2) and model.encoder.grid == (2, 2, 2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    monkeypatch.undo()
    model.set_input_size(img_size=64)  # still usable
    assert model(torch.zeros(1, 3, 4, 64, 64)).shape == (1, 3)


def test_a_model_created_under_inference_mode_loads_and_claims_nothing(tmp_path):
    """Inference tensors keep no version counter: loading must still work, and the card vouches for nothing."""
    from vivit.weights.fit import measured_checkpoint

    with torch.inference_mode():
        model = vivit.create_model("vivit_motion", pretrained=True)
    assert measured_checkpoint(model) is None
    assert measured_checkpoint(vivit.create_model("vivit_motion", pretrained=True)) is not None


def test_the_generic_arch_timm_lists_is_built_by_create_model_too():
    """timm.list_models('vivit*') shows the generic 'vivit' (saved custom configurations): create_model takes it the
    same way, the keywords being the architecture, and refuses weights it has none of."""
    import timm

    # run from the repository root, where a folder named vivit/ exists: the name still means the architecture
    assert "vivit" in timm.list_models("vivit*")
    ours = vivit.create_model("vivit", depth=1, embed_dim=32, num_heads=2, mlp_dim=64, img_size=32, num_frames=4,
                              num_classes=3)
    theirs = timm.create_model("vivit", depth=1, embed_dim=32, num_heads=2, mlp_dim=64, img_size=32, num_frames=4,
                               num_classes=3)
    assert type(ours) is type(theirs) and ours.model_args == theirs.model_args and ours.num_classes == 3
    with pytest.raises(ValueError, match="no weights of its own"):
        vivit.create_model("vivit", pretrained=True)
