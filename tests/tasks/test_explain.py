"""Attention heatmaps for every variant and the PNG grid."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from tests.folders import read_only_folder
from tests.model.test_model import TINY_VARIANTS, tiny
from vivit.data.transforms import to_float
from vivit.tasks.explain import attention_heatmap, frames_for_tokens, save_attention_grid


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_heatmap_covers_the_token_grid_for_every_variant(variant, tmp_path):
    model = tiny(variant, attn_impl="eager")
    clip = torch.rand(3, 4, 16, 24) * 2 - 1
    heat = attention_heatmap(model, clip)
    assert heat.shape == model.grid_size == (2, 2, 3)
    assert heat.min() == 0 and heat.max() == 1
    frames = frames_for_tokens(model, clip)
    assert frames.shape == (2, 16, 24, 3) and frames.dtype == torch.uint8
    path = save_attention_grid(frames, heat, tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_follows_the_cls_row():
    model = tiny("spacetime", attn_impl="eager", depth=1)
    with torch.no_grad():  # make the CLS query attend to token 4 only
        qkv = model.encoder.blocks[0].attn.qkv
        qkv.weight.zero_()
        qkv.bias.zero_()
    clip = torch.zeros(3, 4, 16, 24)
    model.encoder.pos_embed.data.zero_()
    model.encoder.pos_embed.data[0, 1 + 4, 0] = 1.0  # token 4 differs from the others
    with torch.no_grad():
        model.encoder.blocks[0].attn.qkv.weight[16, 0] = 50.0  # key channel 0 <- input channel 0
        model.encoder.blocks[0].attn.qkv.bias[0] = 1.0  # every query has q[0] = 1
        model.encoder.blocks[0].norm1.weight.fill_(1.0)
    heat = attention_heatmap(model, clip).flatten()
    assert int(heat.argmax()) == 4


def test_sdpa_models_are_refused():
    with pytest.raises(ValueError, match="eager"):
        attention_heatmap(tiny("spacetime"), torch.zeros(3, 4, 16, 24))


@pytest.mark.parametrize(("mean", "std"), [((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_frames_are_the_pixels_the_clip_was_made_from(mean, std):
    model = tiny("spacetime", attn_impl="eager")
    model.pretrained_cfg = {"mean": mean, "std": std}
    pixels = torch.randint(0, 256, (4, 16, 24, 3), dtype=torch.uint8)
    clip = to_float(pixels, mean, std)  # as eval_transform normalises with the model's cfg
    central = pixels[[1, 3]]  # tubelets of 2 frames: frames 0-1 and 2-3, centre index step // 2
    assert torch.equal(frames_for_tokens(model, clip), central)
    assert torch.equal(frames_for_tokens(model, clip[None]), central)  # a batch of one, as attention_heatmap takes
    with pytest.raises(ValueError, match="batch of 2"):
        frames_for_tokens(model, torch.stack([clip, clip]))


def test_saving_a_grid_leaves_the_matplotlib_backend_alone(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's inline backend: anything but Agg
    try:
        model = tiny("spacetime", attn_impl="eager")
        clip = torch.rand(3, 4, 16, 24) * 2 - 1
        save_attention_grid(frames_for_tokens(model, clip), attention_heatmap(model, clip), tmp_path / "grid.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def _grid_inputs():
    model = tiny("spacetime", attn_impl="eager")
    clip = torch.rand(3, 4, 16, 24) * 2 - 1
    return frames_for_tokens(model, clip), attention_heatmap(model, clip)


def test_an_interrupted_save_keeps_the_old_image_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    figure = pytest.importorskip("matplotlib.figure")
    frames, heat = _grid_inputs()
    target = tmp_path / "grid.png"
    target.write_bytes(b"old image")

    def interrupted(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(figure.Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_attention_grid(frames, heat, target)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"] and target.read_bytes() == b"old image"


def test_a_grid_is_written_under_its_name_only_once_complete(tmp_path):
    pytest.importorskip("matplotlib")
    frames, heat = _grid_inputs()
    out = save_attention_grid(frames, heat, tmp_path / "sub" / "grid.png")
    assert out == tmp_path / "sub" / "grid.png" and out.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]


def test_a_read_only_folder_is_named_in_one_line_and_left_empty(tmp_path):
    pytest.importorskip("matplotlib")
    frames, heat = _grid_inputs()
    folder = read_only_folder(tmp_path)  # root too: a read-only kernel folder where permission bits do not bind
    before = sorted(p.name for p in folder.iterdir())
    target = folder / "grid.png"
    with pytest.raises(OSError, match="cannot write the image") as info:
        save_attention_grid(frames, heat, target)
    assert str(target) in str(info.value)
    assert "\n" not in str(info.value) and ".part" not in str(info.value)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_failed_write_names_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    figure = pytest.importorskip("matplotlib.figure")
    frames, heat = _grid_inputs()

    def denied(self, fname, **kwargs):  # what a read-only folder does, also when the tests run as root
        raise PermissionError(errno.EACCES, "Permission denied", str(fname))

    monkeypatch.setattr(figure.Figure, "savefig", denied)
    with pytest.raises(OSError, match=r"grid\.png: cannot write the image \(Permission denied\); choose a writable"):
        save_attention_grid(frames, heat, tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []
