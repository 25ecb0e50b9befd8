"""conftest.py for running timm's own ``tests/test_models.py`` on vivit (copied beside it by test_timm_suite.py).

Routing: vivit's models go wherever timm's test file sends ``vit_tiny_patch16_224``. Every ``list_models`` call the
test file makes at import (its ``NON_STD_FILTERS``, ``FEAT_INTER_FILTERS``, ``EXCLUDE_*`` parametrisations) is answered
by timm's own registry; vivit's models are added to an answer exactly when it holds timm's ViT, and removed when it
does not. Only the models named in ``VIVIT_TIMM_SUITE_MODELS`` (comma-separated, ``vit_tiny_patch16_224`` allowed)
are kept, so the run stays small; tests not parametrised by those models are deselected.

The ``test_vivit*`` architectures are tiny test-only configurations of the four variants, registered here only (the
name follows timm's own ``test_vit*`` models): 3 blocks so feature tests find 3 levels, 4 x 32 x 32 clips.
"""

from __future__ import annotations

import fnmatch
import os

import timm

import vivit
from vivit.weights.timm_bridge import register_timm_models
from vivit.zoo import ARCHS

_TINY = dict(img_size=32, num_frames=4, tubelet_size=(2, 8, 8), embed_dim=32, depth=3, num_heads=2, mlp_dim=64)
TEST_ARCHS = {
    "test_vivit": dict(variant="spacetime", **_TINY),
    "test_vivit_fe": dict(variant="factorized_encoder", temporal_depth=1, **_TINY),
    "test_vivit_fsa": dict(variant="factorized_self_attention", **_TINY),
    "test_vivit_fdp": dict(variant="factorized_dot_product", **_TINY),
}
ARCHS.update(TEST_ARCHS)
register_timm_models(TEST_ARCHS)

VIT = "vit_tiny_patch16_224"
MODELS = [m for m in os.environ.get("VIVIT_TIMM_SUITE_MODELS", ",".join(TEST_ARCHS)).split(",") if m]
VIVIT_MODELS = [m for m in MODELS if m != VIT]
assert all(m.split(".")[0] in ARCHS for m in VIVIT_MODELS), (MODELS, vivit.__file__)

_list_models = timm.list_models


def _base(name: str) -> str:
    return name.split(".")[0]


def _excluded(name: str, exclude_filters) -> bool:
    patterns = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters or [])
    return any(fnmatch.fnmatch(name, p) for p in patterns if p)


def routed_list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False,
                       include_tags=None):
    """timm.list_models, with vivit's models placed where timm's ViT is."""
    real = _list_models(filter=filter, module=module, pretrained=pretrained, exclude_filters=exclude_filters,
                        name_matches_cfg=name_matches_cfg, include_tags=include_tags)
    kept = [n for n in real if _base(n) == VIT and VIT in MODELS]
    if any(_base(n) == VIT for n in real):
        candidates = _list_models(filter=[f"{m}*" for m in VIVIT_MODELS], pretrained=pretrained,
                                  name_matches_cfg=name_matches_cfg, include_tags=include_tags)
        kept += [n for n in candidates if (n in VIVIT_MODELS or _base(n) in VIVIT_MODELS)
                 and not _excluded(n, exclude_filters)]
    return kept


def routed_list_pretrained(filter="", exclude_filters=""):
    return routed_list_models(filter=filter, pretrained=True, exclude_filters=exclude_filters, include_tags=True)


timm.list_models = routed_list_models
timm.list_pretrained = routed_list_pretrained


def pytest_collection_modifyitems(config, items):
    """Keep the tests parametrised by a routed model; timm's tests of its other models are not run."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("model_name")
        (keep if isinstance(name, str) and (_base(name) in MODELS or name in MODELS) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
