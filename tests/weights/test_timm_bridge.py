"""timm's factory contracts on vivit models: device/dtype, pretrained_cfg_overlay sources, in_chans adaptation, cfg
keys timm reads, feature extractors, refused TorchScript."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vivit
from tests.hub_server import HubServer
from tests.weights.test_hub import run_hub
from vivit.weights.fit import adapt_input_channels

timm = pytest.importorskip("timm")

MOTION = "vivit_motion"  # weights ship inside the package: pretrained=True works offline
TINY = dict(img_size=32, num_frames=4, tubelet_size=(2, 8, 8), embed_dim=32, depth=1, num_heads=2, mlp_dim=64,
            temporal_depth=1)


def _clip(channels: int = 3) -> torch.Tensor:
    return torch.randn(2, channels, 16, 32, 32, generator=torch.Generator().manual_seed(0))


def _other_weights(path: Path) -> dict[str, torch.Tensor]:
    """vivit_motion-shaped weights that differ from the shipped ones."""
    model = vivit.create_model(MOTION)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.05)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path)
    return state


def _same(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("device, dtype", [("meta", torch.float64), ("cpu", torch.float64), ("cpu", torch.bfloat16)])
def test_create_model_takes_timms_device_and_dtype_factory_kwargs(device, dtype):
    model = timm.create_model("vivit_b_16x2_fe" if device == "meta" else MOTION, device=device, dtype=dtype)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == device for t in tensors)
    assert all(p.dtype == dtype for p in model.parameters())
    if device == "cpu":
        assert model.eval()(_clip().to(dtype)).dtype == dtype


def test_pretrained_cfg_overlay_file_loads_exactly_that_file(tmp_path):
    state = _other_weights(tmp_path / "w.safetensors")
    overlay = dict(file=str(tmp_path / "w.safetensors"))
    model = timm.create_model(MOTION, pretrained=True, pretrained_cfg_overlay=overlay)
    assert _same(model, state)
    assert model.pretrained_cfg["file"] == str(tmp_path / "w.safetensors")
    shipped = timm.create_model(MOTION, pretrained=True)
    assert not _same(shipped, state)


def test_pretrained_cfg_overlay_missing_file_fails_instead_of_loading_other_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pretrained_cfg_overlay file .*nope.safetensors' does not exist"):
        timm.create_model(MOTION, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nope.safetensors")))


def test_pretrained_cfg_overlay_state_dict_and_url(tmp_path, monkeypatch):
    state = _other_weights(tmp_path / "w.safetensors")
    assert _same(timm.create_model(MOTION, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state)), state)
    monkeypatch.setenv("VIVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("VIVIT_OFFLINE", raising=False)
    with HubServer(files={"w.safetensors": (tmp_path / "w.safetensors").read_bytes()}) as server:
        url = server.file_url("w.safetensors")
        model = timm.create_model(MOTION, pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert _same(model, state) and model.pretrained_cfg["url"] == url


def test_pretrained_cfg_overlay_hf_hub_id_loads_that_repo(tmp_path):
    model = vivit.create_model(MOTION)
    with torch.no_grad():
        model.head.weight.normal_()
    folder = model.save_pretrained(tmp_path / "repo")
    code = """
import timm, torch
model = timm.create_model("vivit_motion", pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id="vivit-test/motion"))
print(json.dumps({"head": model.head.weight.sum().item(), "hub": model.pretrained_cfg["hf_hub_id"]}))
"""
    with HubServer(repos={"vivit-test/motion": Path(folder)}) as server:
        result = run_hub(code, server, tmp_path / "hf")
    assert result["hub"] == "vivit-test/motion"
    assert result["head"] == pytest.approx(model.head.weight.sum().item(), abs=1e-4)


@pytest.mark.parametrize("in_chans", [1, 2, 5])
def test_in_chans_adapts_the_pretrained_patch_kernel_as_timm_does(in_chans):
    rgb = timm.create_model(MOTION, pretrained=True).eval()
    model = timm.create_model(MOTION, pretrained=True, in_chans=in_chans).eval()
    kernel = rgb.patch_embed.proj.weight
    adapted = model.patch_embed.proj.weight
    assert adapted.shape[1] == in_chans and model.pretrained_cfg["input_size"][0] == in_chans
    if in_chans == 1:  # a grey clip gives the RGB model's output for that clip repeated over RGB
        torch.testing.assert_close(adapted, kernel.sum(dim=1, keepdim=True))
        grey = _clip(1)
        torch.testing.assert_close(model(grey), rgb(grey.expand(-1, 3, -1, -1, -1)), atol=1e-5, rtol=1e-5)
    else:
        expected = kernel.repeat(1, 2, 1, 1, 1)[:, :in_chans] * (3 / in_chans)
        torch.testing.assert_close(adapted, expected)


def test_adapt_input_channels_keeps_the_dtype():
    kernel = torch.randn(4, 3, 2, 2, 2, dtype=torch.bfloat16)
    assert adapt_input_channels(kernel, 1).dtype == torch.bfloat16
    assert adapt_input_channels(kernel, 3) is kernel


def test_pretrained_cfg_has_the_keys_timm_reads():
    registry = timm.get_pretrained_cfg(MOTION)
    assert registry.pool_size is None and registry.fixed_input_size and registry.custom_load is False
    model = timm.create_model(MOTION)
    assert model.pretrained_cfg["pool_size"] is None and model.pretrained_cfg["fixed_input_size"] is True
    dynamic = timm.create_model(MOTION, dynamic_input_size=True)
    assert dynamic.pretrained_cfg["fixed_input_size"] is False
    assert timm.data.resolve_data_config(model=model)["input_size"] == (3, 16, 32, 32)
    tiny = timm.create_model("vivit_ti_16x2", **TINY)
    assert tiny.pretrained_cfg["input_size"] == (3, 4, 32, 32)  # the model's size, not the architecture's default


def test_generic_vivit_arch_has_a_video_data_config():
    cfg = timm.get_pretrained_cfg("vivit")
    assert cfg is not None
    assert timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())["input_size"] == (3, 32, 224, 224)
    model = timm.create_model("vivit", variant="factorized_dot_product", **TINY)
    assert timm.data.resolve_data_config(model=model)["input_size"] == (3, 4, 32, 32)


@pytest.mark.parametrize("feature_cls", ["fx", "hook"])
def test_features_only_fx_and_hook_return_the_blocks_raw_outputs(feature_cls):
    model = timm.create_model(MOTION, pretrained=True).eval()  # the same (shipped) weights in both
    features = timm.create_model(MOTION, pretrained=True, features_only=True, feature_cls=feature_cls).eval()
    x = _clip()
    _, maps = model.forward_intermediates(x, output_fmt="NLC")
    got = features(x)
    got = list(got.values()) if isinstance(got, dict) else got
    assert len(got) == len(maps) == 2
    for g, m in zip(got, maps, strict=True):  # FE spatial blocks: (b, t, s, d) raw; maps (b, t*s, d)
        torch.testing.assert_close(g.flatten(1, 2), m)
    via_cfg = timm.create_model(MOTION, features_only=True, feature_cfg=dict(feature_cls="fx"))
    assert type(via_cfg).__name__ == "FeatureGraphNet"


def test_unknown_feature_cls_and_scriptable_are_clear_errors():
    with pytest.raises(ValueError, match="feature_cls 'getter'"):
        timm.create_model(MOTION, features_only=True, feature_cls="dict")
    with pytest.raises(RuntimeError, match="not TorchScript-scriptable"):
        timm.create_model(MOTION, scriptable=True)


def test_unknown_model_argument_is_a_type_error():
    with pytest.raises(TypeError):
        timm.create_model(MOTION, device="meta", not_a_model_arg=1)
