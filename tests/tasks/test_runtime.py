"""vivit.tasks.runtime: one setup says what runs the model, and leaves the model alone where a feature is off."""

from __future__ import annotations

import pytest
import torch

import vivit
from vivit.tasks.runtime import setup_runtime


def tiny() -> vivit.ViViT:
    torch.manual_seed(0)
    return vivit.ViViT(variant="spacetime", img_size=32, num_frames=4, embed_dim=32, depth=2, num_heads=2,
                       mlp_dim=64, num_classes=5, global_pool="avg").eval()


def test_token_merging_off_never_touches_a_dense_model(monkeypatch):
    """The CLI passes --token-merging 0 by default: a dense model must not be walked into the merging code."""
    model = tiny()
    calls = []
    monkeypatch.setattr(model, "set_token_merging", lambda r: calls.append(r))
    setup_runtime(model, "cpu", None, "torch", 0)
    setup_runtime(model, "cpu", None, "torch", None)
    assert calls == []
    setup_runtime(model, "cpu", None, "torch", 2)
    assert calls == [2]


def test_token_merging_zero_restores_a_merging_model():
    model = tiny()
    model.set_token_merging(2)
    setup_runtime(model, "cpu", None, "torch", 0)
    assert not model.token_merging and model.encoder.token_merging is None


@pytest.mark.parametrize("pre_logits", [False, True])
def test_the_torch_runtime_runs_the_logits_or_the_pre_logits_and_says_so(pre_logits):
    model, lines = tiny(), []
    x = torch.randn(2, 3, 4, 32, 32, dtype=torch.bfloat16)
    runtime = setup_runtime(model, None, "bfloat16", "torch", pre_logits=pre_logits, say=lines.append)
    assert runtime.backend == "torch" and runtime.dtype == torch.bfloat16 and runtime.fast is None
    assert lines == [f"backend {runtime.note}"] and "bfloat16 on cpu" in runtime.note
    with torch.no_grad():
        want = model.forward_head(model.forward_features(x), pre_logits=True) if pre_logits else model(x)
        torch.testing.assert_close(runtime.fn(x), want, rtol=0, atol=0)
