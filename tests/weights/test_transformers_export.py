"""vivit.export_transformers: Model 1 -> transformers' own VivitForVideoClassification folder (no remote code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import vivit
from tests.model.test_model import tiny
from vivit.data.transforms import EvalTransform, resolve_data_config

transformers = pytest.importorskip("transformers")

REPO_ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-4  # the bound; measured differences are ~1e-6 (float32 summation order)
LABELS = ["jump", "run", "sit", "stand", "walk"]
# Square and non-square tubelets, exact GELU, frames the tubelet does not divide (the leftover frame is dropped).
EXPORTABLE: dict[str, dict[str, Any]] = {
    "tanh_gelu": dict(img_size=32, tubelet_size=(2, 8, 8)),
    "non_square_tubelet": dict(img_size=32, tubelet_size=(2, 8, 4)),
    "exact_gelu_leftover_frame": dict(img_size=32, num_frames=5, act_layer="gelu"),
    "non_square_frames": dict(img_size=(16, 24)),
}


def _model(**kwargs: Any) -> vivit.ViViT:
    model = tiny("spacetime", num_classes=len(LABELS), **kwargs).eval()
    with torch.no_grad():  # the reference zero-initialises the head: give it values so a misplaced one shows
        torch.nn.init.normal_(model.head.weight, std=0.5)
        torch.nn.init.normal_(model.head.bias, std=0.5)
    return model


def _clip(model: vivit.ViViT, seed: int = 0) -> torch.Tensor:
    """A vivit input ``B x C x T x H x W`` in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, model.in_chans, model.num_frames, *model.img_size, generator=gen) * 2 - 1


@pytest.mark.parametrize("case", EXPORTABLE)
def test_export_loads_as_transformers_vivit_with_the_same_logits(tmp_path: Path, case: str) -> None:
    model = _model(**EXPORTABLE[case])
    vivit.export_transformers(model, tmp_path / "out", label_names=LABELS)
    hf = transformers.AutoModelForVideoClassification.from_pretrained(tmp_path / "out").eval()
    assert type(hf) is transformers.VivitForVideoClassification  # transformers' own class: no remote code
    x = _clip(model)
    with torch.no_grad():
        expected = model(x)
        got = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits  # transformers' B x T x C x H x W
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert hf.config.id2label == dict(enumerate(LABELS)) and hf.config.num_frames == model.num_frames
    assert hf.config.hidden_act == ("gelu" if case.startswith("exact") else "gelu_fast")
    assert hf.config.layer_norm_eps == 1e-6


def test_export_uses_the_models_labels_by_default(tmp_path: Path) -> None:
    model = _model(img_size=32)
    model.pretrained_cfg["label_names"] = LABELS
    vivit.export_transformers(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["id2label"] == {str(i): n for i, n in enumerate(LABELS)}


@pytest.mark.parametrize("processor", ["AutoImageProcessor", "AutoVideoProcessor"])
def test_exported_processors_give_vivits_input_normalised_once(tmp_path: Path, processor: str) -> None:
    model = _model(img_size=32)
    vivit.export_transformers(model, tmp_path)
    frames = torch.randint(0, 256, (model.num_frames, 36, 40, 3), dtype=torch.uint8)
    frames[0, 2, 4], frames[0, 2, 5] = 0, 255  # both ends of the range, inside the 32 x 32 centre crop
    proc = getattr(transformers, processor).from_pretrained(tmp_path)
    videos = list(frames.numpy()) if processor == "AutoImageProcessor" else frames.numpy()
    got = proc(videos, return_tensors="pt")["pixel_values"][0].permute(1, 0, 2, 3)  # T C H W -> C T H W
    # vivit's evaluation transform on the same frames: short side 36 (= 32 / 0.875), centre crop, x * 2 / 255 - 1
    expected = EvalTransform.from_cfg(resolve_data_config(model), 1)(frames)
    assert got.shape == expected.shape == (3, model.num_frames, 32, 32)
    assert got.min() == -1 and got.max() == 1  # normalised once: the Hub's double normalisation gives [-3, 1]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "factorized_encoder": (dict(variant="factorized_encoder"), "Model 1"),
    "factorized_self_attention": (dict(variant="factorized_self_attention"), "Model 1"),
    "factorized_dot_product": (dict(variant="factorized_dot_product"), "Model 1"),
    "frame_sampling": (dict(embedding="frame_sampling", tubelet_size=(1, 8, 8), n_sampled_frames=2),
                       "frame sampling"),
    "avg_pool": (dict(global_pool="avg"), "global_pool='avg'"),
    "pre_logits": (dict(representation_size=8), "pre_logits"),
    "no_head": ({}, "no classifier head"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_transformers_cannot_express_is_refused_in_one_line_writing_nothing(tmp_path: Path, case: str) -> None:
    kwargs, reason = REFUSED[case]
    variant = kwargs.pop("variant", "spacetime")
    model = tiny(variant, **kwargs)
    if case == "no_head":
        model.reset_classifier(0)
    with pytest.raises(ValueError, match="cannot export to transformers") as err:
        vivit.export_transformers(model, tmp_path / "out")
    assert reason in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.3 * noise if "layernorm" in name and name.endswith("weight") else 0.2 * noise)
    return module.eval()


def test_transformers_folder_round_trips_through_vivit_bit_for_bit(tmp_path: Path) -> None:
    config = transformers.VivitConfig(hidden_size=48, num_attention_heads=3, num_hidden_layers=2,
                                      intermediate_size=80, image_size=32, num_frames=4, tubelet_size=[2, 8, 8],
                                      hidden_act="gelu_fast", layer_norm_eps=1e-6, num_labels=len(LABELS),
                                      id2label=dict(enumerate(LABELS)))
    original = _randomise(transformers.VivitForVideoClassification(config))
    original.save_pretrained(tmp_path / "hf")
    model = vivit.create_model(str(tmp_path / "hf"), pretrained=True)
    vivit.export_transformers(model, tmp_path / "back")
    back = transformers.AutoModelForVideoClassification.from_pretrained(tmp_path / "back").eval()
    state, back_state = original.state_dict(), back.state_dict()
    assert state.keys() == back_state.keys()
    assert all(torch.equal(state[k], back_state[k]) for k in state)
    x = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(back(pixel_values=x).logits, original(pixel_values=x).logits)
    assert back.config.id2label == dict(enumerate(LABELS))


def test_vivit_convert_to_transformers_writes_a_folder_transformers_loads(tmp_path: Path) -> None:
    model = _model(img_size=32)
    model.save_pretrained(tmp_path / "saved", label_names=LABELS)
    fe = tiny("factorized_encoder")
    fe.save_pretrained(tmp_path / "fe")
    code = (f"import sys; from vivit.cli import main; "
            f"sys.exit(main(['convert', {str(tmp_path / 'saved')!r}, {str(tmp_path / 'out')!r}, '--to', "
            f"'transformers']) * 10 + main(['convert', {str(tmp_path / 'fe')!r}, {str(tmp_path / 'out_fe')!r}, "
            f"'--to', 'transformers']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # 0 for the Model 1 folder, 1 for the refused Model 2
    assert proc.stderr.strip().splitlines()[-1].startswith("vivit convert: cannot export to transformers: ")
    assert not (tmp_path / "out_fe").exists()
    hf = transformers.AutoModelForVideoClassification.from_pretrained(tmp_path / "out").eval()
    x = _clip(model)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits, model(x), atol=ATOL, rtol=0)
    assert hf.config.id2label == dict(enumerate(LABELS))
