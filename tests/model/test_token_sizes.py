"""Token merging's sizes: ``model.token_sizes`` after ``model(x)`` is that of ``forward_features(x)``, and
``forward_head`` pools features with the sizes they came with, never those of a later call."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from tests.model.test_merge import _model, _video


@pytest.mark.parametrize(("variant", "pool"), [("spacetime", "token"), ("spacetime", "avg"),
                                               ("factorized_encoder", "token"), ("factorized_encoder", "avg")])
def test_token_sizes_after_model_x_are_those_of_forward_features(variant, pool):
    model, x = _model(variant, global_pool=pool), _video()
    model.set_token_merging(4, trace_source=True)
    with torch.no_grad():
        model(x)
        sizes, sources = model.token_sizes, model.token_sources
        features = model.forward_features(x)
    torch.testing.assert_close(sizes, model.token_sizes)
    torch.testing.assert_close(sources, model.token_sources)
    tokens = features.shape[1] if variant == "spacetime" else sizes.shape[-2]
    assert sizes.shape[-2] == tokens > 1
    assert torch.all(sizes.sum(dim=(-2, -1)) == sources.shape[-1])  # every input token counted once


@pytest.mark.parametrize("variant", ["spacetime", "factorized_encoder"])
def test_first_pooling_with_merging_equals_forward_head_of_forward_features(variant):
    model, x = _model(variant, global_pool="first", token_merging=4), _video()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)), atol=1e-5, rtol=1e-5)


def test_forward_head_pools_features_with_their_own_sizes_not_a_later_calls():
    model, x1 = _model(global_pool="avg", token_merging=8), _video()
    x2 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x1)
        f1 = model.forward_features(x1)
        model.forward_features(x2)
        torch.testing.assert_close(model.forward_head(f1), expected, atol=1e-5, rtol=1e-5)
        for copied in (f1.clone(), f1.detach() * 1):
            with pytest.raises(ValueError, match="no forward_features call returned.*Pass that output itself"):
                model.forward_head(copied)


def test_the_model_still_pickles_and_copies_after_forward_features():
    model, x = _model(global_pool="avg", token_merging=8), _video()
    with torch.no_grad():
        features = model.forward_features(x)
        again = copy.deepcopy(model)
        loaded = pickle.loads(pickle.dumps(model))
        torch.testing.assert_close(again(x), model.forward_head(features), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.forward_head(loaded.forward_features(x)), again(x), atol=1e-5, rtol=1e-5)


def test_compiled_model_pools_with_its_own_sizes():
    model, x = _model(global_pool="avg", token_merging=(8, -1.0)), _video()
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=1e-5)
