"""Whole weight paths end to end: zoo tag / hf-hub name -> download (loopback) -> convert -> identical outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vivit
from tests.hub_server import HubServer
from tests.weights.test_hub import run_hub
from vivit import zoo

A_FE = dict(embed_dim=32, depth=2, num_heads=4, mlp_dim=64, temporal_depth=2, tubelet_size=(2, 4, 4), num_frames=8,
            img_size=16, num_classes=5)


def test_reference_url_tag_downloads_converts_and_matches_the_reference(tmp_path, golden_dir, monkeypatch):
    checkpoint = golden_dir / "scenic" / "checkpoints" / "vivit_factorized_encoder_A_flax_optim" / "checkpoint_1000"
    arrays = np.load(golden_dir / "scenic" / "vivit_factorized_encoder_A.npz")
    monkeypatch.setenv("VIVIT_CACHE", str(tmp_path / "cache"))
    with HubServer(files={"kinetics_400/vivit_base_16x2_fe/checkpoint": checkpoint.read_bytes()}) as server:
        cfg = zoo.PRETRAINED["vivit_b_16x2_fe.k400"]
        monkeypatch.setitem(zoo.PRETRAINED, cfg.name, dataclasses.replace(
            cfg, url=server.file_url("kinetics_400/vivit_base_16x2_fe/checkpoint"), input_size=(3, 8, 16, 16),
            num_classes=5))
        model = vivit.create_model("vivit_b_16x2_fe.k400", pretrained=True, **A_FE).eval()
        again = vivit.create_model("vivit_b_16x2_fe.k400", pretrained=True, **A_FE).eval()  # from the cache
    assert sum(method == "GET" for method, _ in server.requests) == 1
    video = torch.from_numpy(arrays["input"]).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        np.testing.assert_allclose(model(video).numpy(), arrays["logits"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(again(video), model(video))


def test_reference_tag_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VIVIT_OFFLINE", "1")
    monkeypatch.setenv("VIVIT_CACHE", str(tmp_path))
    with torch.device("meta"), pytest.raises(RuntimeError) as err:
        vivit.create_model("vivit_l_16x2_fe.k600", pretrained=True)
    message = str(err.value)
    assert "kinetics_600/vivit_large_16x2_fe/checkpoint" in message and str(tmp_path) in message


def _hf_tiny_repo(folder: Path):
    transformers = pytest.importorskip("transformers")
    config = transformers.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 16, 16], hidden_size=16,
                                      num_hidden_layers=1, num_attention_heads=4, intermediate_size=32, num_labels=3,
                                      hidden_act="gelu_fast", layer_norm_eps=1e-6,
                                      id2label={0: "archery", 1: "bowling", 2: "juggling balls"})
    torch.manual_seed(0)
    hf = transformers.VivitForVideoClassification(config).eval()
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.2)
    hf.save_pretrained(folder)
    return hf


def test_transformers_hub_tag_and_name_give_the_transformers_logits(tmp_path):
    hf = _hf_tiny_repo(tmp_path / "hf")
    x = torch.randn(2, 3, 4, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
    code = f"""
import torch, vivit
x = torch.load({str(tmp_path / 'x.pt')!r})
tiny = dict(embed_dim=16, depth=1, num_heads=4, mlp_dim=32, img_size=32, num_frames=4, num_classes=3)
tag = vivit.create_model("vivit_b_16x2.k400", pretrained=True, **tiny).eval()
named = vivit.create_model("hf-hub:google/vivit-b-16x2-kinetics400", pretrained=True).eval()
with torch.no_grad():
    torch.save({{"tag": tag(x), "named": named(x)}}, {str(tmp_path / 'out.pt')!r})
print(json.dumps({{"labels": tag.pretrained_cfg.get("label_names"), "act": named.model_args["act_layer"]}}))
"""
    with HubServer(repos={"google/vivit-b-16x2-kinetics400": tmp_path / "hf"}) as server:
        result = run_hub(code, server, tmp_path / "hf_home")
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.testing.assert_close(out["tag"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["named"], expected, atol=1e-5, rtol=1e-5)
    assert result == {"labels": ["archery", "bowling", "juggling balls"], "act": "gelu_tanh"}


def test_save_then_hf_hub_round_trip_in_vivit_and_timm(tmp_path):
    model = vivit.ViViT(variant="factorized_self_attention", img_size=32, num_frames=4, tubelet_size=(2, 16, 16),
                        embed_dim=16, depth=1, num_heads=4, mlp_dim=32, num_classes=3, attention_order="time_space")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    model.save_pretrained(tmp_path / "repo", label_names=["a", "b", "c"])
    x = torch.randn(1, 3, 4, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    code = f"""
import torch, timm, vivit
x = torch.load({str(tmp_path / 'x.pt')!r})
a = vivit.create_model("hf-hub:org/tiny-fsa", pretrained=True).eval()
b = timm.create_model("hf-hub:org/tiny-fsa", pretrained=True).eval()
c = vivit.create_model("hf-hub:org/tiny-fsa", pretrained=True, num_frames=8, num_classes=5).eval()
with torch.no_grad():
    torch.save({{"a": a(x), "b": b(x)}}, {str(tmp_path / 'out.pt')!r})
print(json.dumps({{"labels": a.pretrained_cfg.get("label_names"), "grid": list(c.grid_size),
                   "c_head_zero": bool((c.head.weight == 0).all())}}))
"""
    with HubServer(repos={"org/tiny-fsa": tmp_path / "repo"}) as server:
        result = run_hub(code, server, tmp_path / "hf_home")
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        expected = model.eval()(x)
    torch.testing.assert_close(out["a"], expected, atol=0, rtol=0)
    torch.testing.assert_close(out["b"], expected, atol=0, rtol=0)
    assert result == {"labels": ["a", "b", "c"], "grid": [4, 2, 2], "c_head_zero": True}
    assert json.loads((tmp_path / "repo" / "config.json").read_text())["model_args"]["attention_order"] == "time_space"
