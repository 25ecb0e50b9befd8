"""Every reference forward vector (``golden/scenic/*.npz``) at atol = rtol = 1e-5, with both attention paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import GOLDEN_DIR
from vivit.weights.convert import from_scenic

GOLDEN_FILES = sorted(p.stem for p in (GOLDEN_DIR / "scenic").glob("*.json")) if GOLDEN_DIR.is_dir() else []


def load_golden(golden_dir, stem):
    sidecar = json.loads((golden_dir / "scenic" / f"{stem}.json").read_text())
    arrays = dict(np.load(golden_dir / "scenic" / f"{stem}.npz"))
    params = {k: v for k, v in arrays.items() if k.startswith("params/")}
    return sidecar, params, arrays


def test_golden_files_are_present(golden_dir):
    assert len(GOLDEN_FILES) >= 6, GOLDEN_FILES


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
@pytest.mark.parametrize("stem", GOLDEN_FILES)
def test_logits_and_pre_logits_match_reference(golden_dir, stem, attn_impl):
    sidecar, params, arrays = load_golden(golden_dir, stem)
    video = torch.from_numpy(arrays["input"]).permute(0, 4, 1, 2, 3)  # NTHWC -> B C T H W
    model = from_scenic(params, sidecar["scenic_config"], img_size=tuple(video.shape[-2:]), attn_impl=attn_impl)
    with torch.no_grad():
        features = model.forward_features(video)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    np.testing.assert_allclose(pre_logits.numpy(), arrays["pre_logits"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits.numpy(), arrays["logits"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(model(video).detach().numpy(), arrays["logits"], atol=1e-5, rtol=1e-5)
