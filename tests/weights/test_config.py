"""vivit.weights.config: a saved config.json is checked before anything is built; construct is the one constructor."""

from __future__ import annotations

import pytest

from vivit.model.vivit import ViViT
from vivit.weights.config import (
    MAX_LABEL_CHARS,
    MAX_PARAMETERS,
    VIVIT_ARGS,
    check_label_names,
    checked_model_args,
    construct,
    estimate_parameters,
    pretrained_cfg,
    with_defaults,
)
from vivit.zoo import ARCHS

SMALL = dict(img_size=32, num_frames=4, tubelet_size=[2, 16, 16], embed_dim=16, depth=1, num_heads=2, mlp_dim=32,
             num_classes=3)
WHERE = "/saved/config.json"


def config(**changes) -> dict:
    return {"model_args": {**SMALL, **changes}, "num_classes": changes.get("num_classes", 3)}


def test_a_sane_config_gives_its_model_args_as_a_copy() -> None:
    cfg = config()
    args = checked_model_args(cfg, WHERE)
    assert args == cfg["model_args"] and args is not cfg["model_args"]


@pytest.mark.parametrize(("cfg", "match"), [
    ({"model_args": [1, 2]}, "model_args is list, expected an object of ViViT arguments"),
    (config(depht=2), r"model_args has unknown key\(s\) \['depht'\]"),
    (config(depth=10**6), r"model_args.depth is 1000000; expected an int in \[0, 256\]"),
    (config(num_heads="2"), "model_args.num_heads is '2'"),
    (config(img_size=10**7), r"model_args.img_size must be an int or \(H, W\) of ints in \[1, 8192\]"),
    (config(img_size=[32]), r"model_args.img_size must be an int or \(H, W\) of positive ints, got \[32\]"),
    (config(num_frames=10**6), r"model_args.num_frames must be an int in \[1, 8192\]"),
    (config(num_frames=1.5), "model_args.num_frames must be an int, got 1.5"),
    (config(tubelet_size=[0, 16, 16]), r"model_args.tubelet_size must be \(t, h, w\) of ints in \[1, 8192\]"),
    (config(depth=256, embed_dim=16384, num_heads=16, mlp_dim=65536), "parameters .*refused before anything is built"),
])
def test_each_hostile_field_is_one_value_error_naming_the_file_and_field(cfg: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        checked_model_args(cfg, WHERE)
    assert str(info.value).startswith(f"{WHERE}: ")


def test_a_frame_count_the_model_can_be_set_to_can_be_loaded() -> None:
    """The saved bound on num_frames is set_input_size's (grid.MAX_SIDE): a model set to 5000 frames saves and loads."""
    assert checked_model_args(config(num_frames=5000, tubelet_size=[8, 16, 16]), WHERE)["num_frames"] == 5000


@pytest.mark.parametrize("variant", ["spacetime", "factorized_encoder", "factorized_self_attention",
                                     "factorized_dot_product"])
def test_estimate_parameters_is_an_upper_bound(variant: str) -> None:
    args = {**SMALL, "variant": variant, "temporal_depth": 1, "tubelet_size": (2, 16, 16)}
    real = sum(p.numel() for p in ViViT(**args).parameters())
    assert real <= estimate_parameters(with_defaults(args)) <= 4 * real


def test_every_registered_architecture_is_within_the_parameter_limit() -> None:
    assert max(estimate_parameters(with_defaults(args)) for args in ARCHS.values()) < MAX_PARAMETERS


@pytest.mark.parametrize(("labels", "match"), [
    ("abc", "label_names must be a list of strings"), ([1, 2, 3], "label_names must be a list of strings"),
    (["a", "b\nc", "d"], r"label_names\[1\] = 'b\\nc' is not a one-line name"),
    (["a", "b" * (MAX_LABEL_CHARS + 1), "c"], r"label_names\[1\]"),
    (["a", "b"], "label_names has 2 names but num_classes is 3"),
])
def test_label_names_are_one_line_strings_one_per_class(labels, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_label_names(labels, 3, WHERE)
    assert check_label_names(None, 3, WHERE) is None and check_label_names(["a", "b", "c"], 3, WHERE) == ["a", "b", "c"]


def test_with_defaults_completes_every_vivit_argument() -> None:
    full = with_defaults({"depth": 1})
    assert set(full) == VIVIT_ARGS and full["depth"] == 1 and full["variant"] == "spacetime"


def test_pretrained_cfg_assembly_rules() -> None:
    model = ViViT(**{**SMALL, "tubelet_size": (2, 16, 16)})
    cfg = pretrained_cfg(model, {"tag": "k400", "input_size": (3, 32, 224, 224)})
    assert cfg["input_size"] == (3, 4, 32, 32) and cfg["fixed_input_size"] and cfg["tag"] == "k400"
    assert cfg["num_classes"] == 3 and "label_names" not in cfg  # the model's head when the base states none
    assert pretrained_cfg(model, {"num_classes": 400})["num_classes"] == 400  # a release states its own count
    assert pretrained_cfg(model, {}, ["a", "b", "c"])["label_names"] == ["a", "b", "c"]
    assert "label_names" not in pretrained_cfg(model, {}, ["a", "b"])  # names for another head are not this one's
    assert pretrained_cfg(model, {}, overlay={"input_size": (3, 1, 1, 1)})["input_size"] == (3, 1, 1, 1)


def test_construct_builds_the_model_with_its_cfg() -> None:
    model = construct({**SMALL, "tubelet_size": (2, 16, 16)}, {"architecture": "vivit"}, ["a", "b", "c"])
    assert isinstance(model, ViViT) and model.num_classes == 3
    assert model.pretrained_cfg["architecture"] == "vivit" and model.pretrained_cfg["label_names"] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        construct({**SMALL, "depth": 0})
