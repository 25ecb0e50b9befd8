"""vivit.weights.build: the one builder decides everything first, constructs once, then loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vivit
from vivit.model.vivit import ViViT
from vivit.weights import load, read
from vivit.weights.build import build
from vivit.weights.publish import save_pretrained
from vivit.weights.source import parse_source

SMALL = dict(img_size=32, num_frames=4, embed_dim=16, depth=1, num_heads=2, mlp_dim=32)
ARCH = "vivit_b_16x2"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many ViViT models were constructed and how many format detections ran."""
    counts = {"models": 0, "detections": 0}
    init, detect = ViViT.__init__, read.detect_format

    def counting_init(self, *args, **kwargs):
        counts["models"] += 1
        init(self, *args, **kwargs)

    def counting_detect(path):
        counts["detections"] += 1
        return detect(path)

    monkeypatch.setattr(ViViT, "__init__", counting_init)
    monkeypatch.setattr(read, "detect_format", counting_detect)
    monkeypatch.setattr(load, "detect_format", counting_detect)
    return counts


@pytest.fixture
def weights_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = ViViT(**SMALL, num_classes=5)
    torch.nn.init.normal_(model.head.weight)
    path = tmp_path / "w.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return path, state


def test_weights_into_an_arch_construct_once_detect_once_and_take_the_weights_head(weights_file, counted) -> None:
    path, state = weights_file
    model = vivit.create_model(ARCH, pretrained=str(path), **SMALL)
    assert counted == {"models": 1, "detections": 1}
    assert model.num_classes == 5 and torch.equal(model.head.weight, state["head.weight"])
    cfg = model.pretrained_cfg
    assert (cfg["num_classes"], cfg["source"], cfg["file"], cfg["tag"], cfg["top1"]) == (5, "local-dir", str(path), "",
                                                                                          None)
    assert cfg["input_size"] == (3, 4, 32, 32)


def test_num_classes_keeps_its_head_at_init_and_loads_the_rest(weights_file) -> None:
    path, state = weights_file
    model = vivit.create_model(ARCH, pretrained=str(path), num_classes=7, **SMALL)
    assert model.num_classes == 7 and not model.head.weight.any()
    assert torch.equal(model.patch_embed.proj.weight, state["patch_embed.proj.weight"])
    assert model.pretrained_cfg["num_classes"] == 7


def test_a_saved_folder_is_constructed_once_with_its_labels_and_overrides(tmp_path: Path, counted) -> None:
    folder = save_pretrained(ViViT(**SMALL, num_classes=3), tmp_path / "saved", label_names=["a", "b", "c"])
    counted["models"] = 0
    model = build(parse_source(f"local-dir:{folder}"), True, num_frames=8)
    assert counted["models"] == 1 and model.num_frames == 8
    cfg = model.pretrained_cfg
    assert (cfg["label_names"], cfg["source"], cfg["file"], cfg["input_size"]) == (["a", "b", "c"], "local-dir",
                                                                                  str(folder), (3, 8, 32, 32))


def test_an_arch_without_released_weights_is_refused_before_anything_is_built(counted) -> None:
    with pytest.raises(ValueError, match="has no released weights"):
        vivit.create_model("vivit_l_16x2_fsa", pretrained=True)
    assert counted["models"] == 0


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: vivit.create_model(ARCH, num_frame=8), TypeError, "did you mean 'num_frames'"),
    (lambda: vivit.create_model("vivit", pretrained=True), ValueError, "has no weights of its own"),
    (lambda: build(parse_source("local-dir:x"), parse_source("y.pt")), ValueError, "brings its own weights"),
    (lambda: vivit.create_model("no/such/folder"), FileNotFoundError, "neither a registered model nor"),
])
def test_bad_requests_get_one_clear_error(call, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_a_weights_file_as_the_name_says_which_argument_takes_it(weights_file) -> None:
    path, _ = weights_file
    with pytest.raises(ValueError, match=r"name the architecture it belongs to.*pretrained="):
        vivit.create_model(str(path))


def test_timms_overlay_wins_in_pretrained_cfg() -> None:
    model = build(parse_source(ARCH), cfg_overlay={"mean": (0.1, 0.2, 0.3)}, **SMALL)
    assert model.pretrained_cfg["mean"] == (0.1, 0.2, 0.3) and model.pretrained_cfg["architecture"] == ARCH
