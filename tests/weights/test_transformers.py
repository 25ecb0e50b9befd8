"""Hugging Face transformers ViViT -> ViViT: same logits / pooler output, key layouts, refusals."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch

from vivit.weights.convert.transformers import from_transformers

transformers = pytest.importorskip("transformers")

ATOL = RTOL = 1e-5
LABELS = ["abseiling", "air drumming", "answering questions", "applauding", "applying cream", "archery",
          "arm wrestling"]
# Non-default sizes everywhere, so a value taken from a default instead of the config shows up.
CONFIGS: dict[str, dict[str, Any]] = {
    "gelu_fast": dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=2, intermediate_size=80,
                      image_size=32, num_frames=4, tubelet_size=[2, 8, 8], hidden_act="gelu_fast"),
    # Non-square frames and tubelet pin the h/w order; 5 frames with t=2 drop a leftover frame.
    "gelu_eps1e-5_nobias": dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=2, intermediate_size=80,
                                image_size=[32, 48], num_frames=5, tubelet_size=[2, 8, 16], hidden_act="gelu",
                                layer_norm_eps=1e-5, qkv_bias=False, num_channels=2),
}


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Random values in every parameter (LayerNorm weights around 1), so a misplaced tensor changes the output."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * noise)
            else:
                p.copy_(0.2 * noise)
    return module.eval()


def _hf_config(name: str, **overrides: Any):
    kwargs = {**CONFIGS[name], "num_labels": len(LABELS), "id2label": dict(enumerate(LABELS)), **overrides}
    return transformers.VivitConfig(**kwargs)


def _hf_classifier(name: str):
    return _randomise(transformers.VivitForVideoClassification(_hf_config(name)))


def _video(config) -> torch.Tensor:
    """transformers layout ``B x T x C x H x W``."""
    image = config.image_size
    h, w = (image, image) if isinstance(image, int) else image
    return torch.randn(2, config.num_frames, config.num_channels, h, w, generator=torch.Generator().manual_seed(2))


def _ours(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 1, 3, 4)  # B T C H W -> B C T H W


def _to_4x(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename transformers 5.x keys to the 4.x spelling (``encoder.layer.{i}.attention.attention.query`` ...)."""
    renames = [
        (r"\blayers\.(\d+)\.", r"encoder.layer.\1."),
        (r"attention\.q_proj", "attention.attention.query"),
        (r"attention\.k_proj", "attention.attention.key"),
        (r"attention\.v_proj", "attention.attention.value"),
        (r"attention\.o_proj", "attention.output.dense"),
        (r"mlp\.fc1", "intermediate.dense"),
        (r"mlp\.fc2", "output.dense"),
    ]
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


ROUTES: dict[str, Callable[[Any], Any]] = {
    "module": lambda hf: from_transformers(hf),
    "state_dict+VivitConfig": lambda hf: from_transformers(hf.state_dict(), hf.config),
    "state_dict+dict": lambda hf: from_transformers(hf.state_dict(), hf.config.to_dict()),
    "state_dict+config.json": lambda hf: from_transformers(hf.state_dict(), json.loads(hf.config.to_json_string())),
    "4.x_keys+dict": lambda hf: from_transformers(_to_4x(hf.state_dict()), hf.config.to_dict()),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("config_name", CONFIGS)
def test_classifier_logits_match_transformers(config_name: str, route: str) -> None:
    hf = _hf_classifier(config_name)
    x = _video(hf.config)
    model = ROUTES[route](hf)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        got = model(_ours(x))
    assert model.num_classes == len(LABELS)
    assert model.pretrained_cfg["label_names"] == LABELS
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


def test_config_values_reach_the_model() -> None:
    model = from_transformers(_hf_classifier("gelu_eps1e-5_nobias"))
    block = model.encoder.blocks[0]
    assert model.tubelet_size == (2, 8, 16) and model.img_size == (32, 48) and model.num_frames == 5
    assert model.in_chans == 2 and len(model.encoder.blocks) == 2 and block.attn.num_heads == 3
    assert block.norm1.eps == 1e-5 and block.mlp.fc1.out_features == 80
    assert block.mlp.act.approximate == "none"
    assert not model.encoder.blocks[1].attn.qkv.bias.any()  # qkv_bias=False -> zeros
    assert from_transformers(_hf_classifier("gelu_fast")).encoder.blocks[0].mlp.act.approximate == "tanh"


@pytest.mark.parametrize("config_name", CONFIGS)
def test_vivit_model_pre_logits_match_pooler_output(config_name: str) -> None:
    hf = _randomise(transformers.VivitModel(_hf_config(config_name)))
    x = _video(hf.config)
    for model in (from_transformers(hf), from_transformers(_to_4x(hf.state_dict()), hf.config.to_dict())):
        with torch.no_grad():
            expected = hf(pixel_values=x).pooler_output
            got = model.forward_head(model.forward_features(_ours(x)), pre_logits=True)
            logits = model(_ours(x))
        assert model.num_classes == 0 and "label_names" not in model.pretrained_cfg
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(logits, expected, atol=ATOL, rtol=RTOL)


def test_vivit_model_without_pooler_gives_the_normed_cls_token() -> None:
    hf = _randomise(transformers.VivitModel(_hf_config("gelu_fast"), add_pooling_layer=False))
    x = _video(hf.config)
    model = from_transformers(hf.state_dict(), hf.config)
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state[:, 0]
        got = model.forward_head(model.forward_features(_ours(x)), pre_logits=True)
    assert isinstance(model.pre_logits, torch.nn.Identity)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


def test_placeholder_labels_are_not_stored() -> None:
    hf = _randomise(transformers.VivitForVideoClassification(transformers.VivitConfig(**CONFIGS["gelu_fast"],
                                                                                       num_labels=3)))
    assert "label_names" not in from_transformers(hf).pretrained_cfg


def test_labels_omitted_from_the_config_are_counted_from_the_weights() -> None:
    hf = _hf_classifier("gelu_fast")
    config = {k: v for k, v in hf.config.to_dict().items() if k not in ("id2label", "label2id", "num_labels")}
    model = from_transformers(hf.state_dict(), config)
    assert model.num_classes == len(LABELS) and "label_names" not in model.pretrained_cfg


@pytest.mark.parametrize("act", ["relu", "quick_gelu"])
def test_unsupported_activation_is_refused_by_name(act: str) -> None:
    hf = _hf_classifier("gelu_fast")
    config = {**hf.config.to_dict(), "hidden_act": act}
    with pytest.raises(ValueError, match=act):
        from_transformers(hf.state_dict(), config)


def test_extra_key_is_refused_by_name() -> None:
    hf = _hf_classifier("gelu_fast")
    state = {**hf.state_dict(), "vivit.layers.2.mlp.fc1.weight": torch.zeros(80, 48)}
    with pytest.raises(ValueError, match=re.escape("vivit.layers.2.mlp.fc1.weight")):
        from_transformers(state, hf.config)


def test_missing_key_is_refused_by_name() -> None:
    hf = _hf_classifier("gelu_fast")
    state = dict(hf.state_dict())
    del state["vivit.layers.1.attention.k_proj.bias"]
    with pytest.raises(ValueError, match=re.escape("vivit.layers.1.attention.k_proj.bias")):
        from_transformers(state, hf.config)


def test_pooler_beside_a_classifier_is_refused() -> None:
    # transformers' classifier reads the CLS token, bypassing any pooler; silently dropping it would hide a mix-up.
    hf = _hf_classifier("gelu_fast")
    state = {**hf.state_dict(), "vivit.pooler.dense.weight": torch.zeros(48, 48),
             "vivit.pooler.dense.bias": torch.zeros(48)}
    with pytest.raises(ValueError, match="pooler.dense"):
        from_transformers(state, hf.config)


def test_config_that_does_not_fit_the_weights_is_refused() -> None:
    hf = _hf_classifier("gelu_fast")
    with pytest.raises(ValueError, match="intermediate_size|mlp.fc1"):
        from_transformers(hf.state_dict(), {**hf.config.to_dict(), "intermediate_size": 96})
    with pytest.raises(ValueError, match="head.weight"):
        from_transformers(hf.state_dict(), {**hf.config.to_dict(), "id2label": {0: "a", 1: "b"}})


def test_missing_or_incomplete_config_is_refused() -> None:
    hf = _hf_classifier("gelu_fast")
    with pytest.raises(ValueError, match="config="):
        from_transformers(hf.state_dict())
    config = hf.config.to_dict()
    del config["tubelet_size"]
    with pytest.raises(ValueError, match="tubelet_size"):
        from_transformers(hf.state_dict(), config)
    with pytest.raises(ValueError, match="model_type"):
        from_transformers(hf.state_dict(), {**hf.config.to_dict(), "model_type": "videomae"})


def test_foreign_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="VivitForVideoClassification"):
        from_transformers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not a transformers ViViT state dict"):
        from_transformers({"weight": torch.zeros(2)}, _hf_config("gelu_fast"))


def test_module_import_does_not_load_transformers() -> None:
    code = "import sys, vivit, vivit.weights.convert.transformers; assert 'transformers' not in sys.modules, 'loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)
