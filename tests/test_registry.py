"""The zoo: every registered architecture builds, trains and matches the paper's size; names resolve; timm sees it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import vivit
from tests.conftest import TINY
from vivit.zoo import ARCHS, PRETRAINED

PAPER_PARAMS_B = {"vivit_b_16x2": 88.9e6, "vivit_b_16x2_fe": 115.1e6, "vivit_b_16x2_fsa": 117.3e6,
                  "vivit_b_16x2_fdp": 88.9e6}


def test_registry_has_the_19_architectures_of_the_spec_and_the_embedded_model():
    names = vivit.list_models()
    assert len(names) == 20 and "vivit_motion" in names
    assert "vivit_ti_16x2_fdp" not in names  # 3 heads cannot be split between time and space
    for size in ("ti", "s", "b", "l", "h"):
        for suffix in ("", "_fe", "_fsa") + (("_fdp",) if size != "ti" else ()):
            assert f"vivit_{size}_16x2{suffix}" in names


def test_list_models_filters_and_lists_pretrained_tags():
    assert vivit.list_models("*_fe") == ["vivit_b_16x2_fe", "vivit_h_16x2_fe", "vivit_l_16x2_fe",
                                         "vivit_s_16x2_fe", "vivit_ti_16x2_fe"]
    assert vivit.list_models(pretrained=True) == ["vivit_b_16x2.k400", "vivit_b_16x2_fe.k400",
                                                  "vivit_l_16x2_fe.ek100", "vivit_l_16x2_fe.k400",
                                                  "vivit_l_16x2_fe.k600", "vivit_motion.synthetic"]
    assert vivit.list_models("vivit_l*", pretrained=True) == ["vivit_l_16x2_fe.ek100", "vivit_l_16x2_fe.k400",
                                                              "vivit_l_16x2_fe.k600"]


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_every_model_trains_at_tiny_size(name):
    model = vivit.create_model(name, num_classes=3, **TINY)
    torch.nn.init.normal_(model.head.weight)  # a zero head would zero every upstream gradient
    model.train()
    logits = model(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad


@pytest.mark.parametrize("name", sorted(set(ARCHS) - {"vivit_motion"}))
def test_every_paper_model_builds_full_size_on_meta(name):
    with torch.device("meta"):
        model = vivit.create_model(name)
    assert model.grid_size == (16, 14, 14)
    assert model.embed_dim == ARCHS[name]["embed_dim"] and model.num_classes == 400
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 224, 224) and cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["label_set"] and cfg["paper_ids"] == "arXiv:2103.15691"


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_B))
def test_vivit_b_parameter_counts_match_the_paper(name):
    with torch.device("meta"):
        model = vivit.create_model(name, num_classes=400)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - PAPER_PARAMS_B[name]) / PAPER_PARAMS_B[name] < 0.005, count


def test_large_fe_uses_a_24_layer_temporal_encoder():
    with torch.device("meta"):
        model = vivit.create_model("vivit_l_16x2_fe")
    assert len(model.encoder.spatial.blocks) == 24 and len(model.encoder.temporal.blocks) == 24


def test_default_pooling_per_variant():
    assert vivit.create_model("vivit_ti_16x2", **TINY).global_pool == "token"
    assert vivit.create_model("vivit_ti_16x2_fe", **TINY).global_pool == "token"
    assert vivit.create_model("vivit_ti_16x2_fsa", **TINY).global_pool == "avg"
    assert vivit.create_model("vivit_s_16x2_fdp", **TINY).global_pool == "avg"


def test_create_model_overrides_frames_size_and_classes():
    model = vivit.create_model("vivit_ti_16x2", num_classes=7, num_frames=8, img_size=(48, 64), depth=1)
    assert model.grid_size == (4, 3, 4) and model.num_classes == 7
    assert model.pretrained_cfg["input_size"] == (3, 8, 48, 64)
    assert model(torch.randn(1, 3, 8, 48, 64)).shape == (1, 7)


@pytest.mark.parametrize(("name", "close"), [("vivit_b_16x2_fee", "vivit_b_16x2_fe"), ("vivit_b16x2", "vivit_b_16x2"),
                                             ("vivit_b_16x2_fe.k700", "vivit_b_16x2_fe.k400")])
def test_unknown_names_list_the_closest_registered_ones(name, close):
    with pytest.raises(ValueError, match="unknown model") as err:
        vivit.create_model(name)
    assert close in str(err.value)


def test_pretrained_without_released_weights_says_what_exists():
    with pytest.raises(ValueError, match="no released weights"):
        vivit.create_model("vivit_h_16x2", pretrained=True, **TINY)


def test_model_4_of_an_odd_head_count_says_why_it_is_not_registered():
    with pytest.raises(ValueError, match="even head count and ViViT-Ti has 3") as err:
        vivit.create_model("vivit_ti_16x2_fdp")
    assert "vivit_ti_16x2_fsa" in str(err.value)


@pytest.mark.parametrize(("kwargs", "hint"), [({"num_frame": 8}, "did you mean 'num_frames'"),
                                              ({"drop_path": 0.1}, "did you mean 'drop_path_rate'"),
                                              ({"colour": 1}, "ViViT takes")])
def test_a_misspelt_keyword_names_the_close_match(kwargs, hint):
    with pytest.raises(TypeError, match=hint):
        vivit.create_model("vivit_ti_16x2", **kwargs)


def _saved_tiny(folder, num_classes=3):
    model = vivit.create_model("vivit_ti_16x2_fe", num_classes=num_classes, **TINY).eval()
    torch.nn.init.normal_(model.head.weight)  # a head that is not the zero init, so a dropped head shows
    model.save_pretrained(folder, label_names=[f"c{i}" for i in range(num_classes)])
    return model


def test_from_pretrained_and_a_plain_folder_name_load_a_saved_model(tmp_path, monkeypatch):
    original = _saved_tiny(tmp_path / "saved")
    monkeypatch.chdir(tmp_path)
    x = torch.randn(1, 3, 4, 32, 32)
    for model in (vivit.ViViT.from_pretrained(tmp_path / "saved"), vivit.ViViT.from_pretrained("saved"),
                  vivit.create_model("saved", pretrained=True), vivit.create_model(str(tmp_path / "saved"),
                                                                                   pretrained=True)):
        torch.testing.assert_close(model.eval()(x), original(x), rtol=0, atol=0)
        assert model.pretrained_cfg["label_names"] == ["c0", "c1", "c2"]


def test_pretrained_as_a_string_loads_that_source_into_the_architecture(tmp_path):
    original = _saved_tiny(tmp_path / "saved")
    x = torch.randn(1, 3, 4, 32, 32)
    for source in (str(tmp_path / "saved"), tmp_path / "saved" / "model.safetensors"):  # a str or a Path
        model = vivit.create_model("vivit_ti_16x2_fe", pretrained=source, **TINY).eval()
        assert model.num_classes == 3  # the head follows the weights
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)
        cfg = model.pretrained_cfg
        assert cfg["file"] == str(source) and cfg["hf_hub_id"] is None and cfg["url"] is None and cfg["top1"] is None
    new_head = vivit.create_model("vivit_ti_16x2_fe", pretrained=str(tmp_path / "saved"), num_classes=5, **TINY)
    assert new_head.num_classes == 5 and not new_head.head.weight.any()  # only the head is reset
    torch.testing.assert_close(new_head.forward_features(x), original.forward_features(x), rtol=0, atol=0)


def test_paths_that_cannot_name_a_model_say_what_to_write(tmp_path):
    _saved_tiny(tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match="'hf-hub:someone/vivit-repo'"):
        vivit.create_model("someone/vivit-repo")
    with pytest.raises(ValueError, match="pretrained="):
        vivit.create_model(str(tmp_path / "saved" / "model.safetensors"))
    with pytest.raises(ValueError, match="brings its own weights"):
        vivit.create_model(str(tmp_path / "saved"), pretrained="vivit_motion.synthetic")


def test_pretrained_cfgs_describe_the_released_checkpoints():
    ek = PRETRAINED["vivit_l_16x2_fe.ek100"]
    assert ek.num_classes == 397 and ek.class_splits == (300, 97) and ek.top1 == 43.6
    assert PRETRAINED["vivit_b_16x2.k400"].hf_hub_id == "google/vivit-b-16x2-kinetics400"
    for cfg in (c for c in PRETRAINED.values() if c.architecture != "vivit_motion"):
        assert cfg.has_weights and cfg.input_size == (3, 32, 224, 224)
        assert (cfg.url or "").startswith(("", "https://storage.googleapis.com/scenic-bucket/vivit/"))


def test_timm_sees_every_architecture_and_tag():
    timm = pytest.importorskip("timm")
    assert sorted(timm.list_models("vivit_*")) == vivit.list_models()
    assert "vivit" in timm.list_models("vivit")  # custom configurations saved by save_pretrained
    assert sorted(timm.list_pretrained("vivit*")) == vivit.list_models(pretrained=True)
    model = timm.create_model("vivit_s_16x2_fsa", num_classes=2, **TINY)
    assert isinstance(model, vivit.ViViT) and model.num_classes == 2
    assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 2)


def test_import_vivit_loads_no_optional_heavy_dependency():
    code = ("import sys, vivit; "
            "print(sorted(m for m in ('av', 'torchcodec', 'transformers', 'msgpack') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_embedded_motion_model_works_offline_and_needs_time(monkeypatch):
    from vivit.data.synthetic import make_dataset

    monkeypatch.setenv("VIVIT_OFFLINE", "1")
    model = vivit.create_model("vivit_motion", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"][-2:] == ["blinking", "static"]
    videos, labels = make_dataset(60, seed=2024)
    x = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() * 2 / 255 - 1
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == torch.from_numpy(labels)).float().mean()
        reversed_accuracy = (model(x.flip(2)).argmax(-1) == torch.from_numpy(labels)).float().mean()
    assert accuracy >= 0.95
    assert reversed_accuracy < 0.5  # playing the clips backwards changes the answer: the model reads time


def test_released_cfgs_sample_frames_at_the_reference_configs_stride():
    # scenic configs: Kinetics dataset_configs.stride = 2, epic_kitchens/vivit_large_factorised_encoder.py stride = 1
    strides = {name: cfg.frame_stride for name, cfg in PRETRAINED.items() if cfg.source_format != "vivit"}
    assert strides == {"vivit_b_16x2.k400": 2, "vivit_b_16x2_fe.k400": 2, "vivit_l_16x2_fe.k400": 2,
                       "vivit_l_16x2_fe.k600": 2, "vivit_l_16x2_fe.ek100": 1}


def test_untagged_defaults_take_the_input_size_from_the_architecture(monkeypatch):
    from vivit import zoo

    monkeypatch.setitem(zoo.ARCHS, "vivit_test_small", {**ARCHS["vivit_ti_16x2"], "img_size": (64, 48),
                                                        "num_frames": 8})
    assert zoo.arch_defaults("vivit_test_small").input_size == (3, 8, 64, 48)
    assert zoo.arch_defaults("vivit").input_size == (3, 32, 224, 224)  # the generic arch: the paper's input
