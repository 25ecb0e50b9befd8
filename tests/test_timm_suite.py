"""timm's own ``tests/test_models.py`` run on vivit's small models, plus 5-D versions of its 2-D-only tests.

The test file comes from the sdist of the installed timm release (``pip download --no-binary :all:``), cached in
pytest's cache; it runs in a subprocess with ``tests/timm_suite_conftest.py`` as its conftest, which sends vivit's
models wherever timm sends ``vit_tiny_patch16_224``. The outcome per timm test function is the table in
``docs/guides/backbones.md``; ``test_timm_suite_results_match_the_docs_table`` keeps the two equal. Set
``VIVIT_TIMM_SUITE_VIT=1`` to also run ``vit_tiny_patch16_224`` and check the table's ViT column (slow: ~2 min).
"""

from __future__ import annotations

import ast
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import vivit  # noqa: F401  (registers vivit's architectures into timm)

timm = pytest.importorskip("timm")

# timm's test file runs in one subprocess bounded at 900 s (below): this module's per-test bound sits above it
pytestmark = pytest.mark.timeout(1200)

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "guides" / "backbones.md"
TABLE_START, TABLE_END = "<!-- timm-suite-table:start -->", "<!-- timm-suite-table:end -->"
VIT = "vit_tiny_patch16_224"
# Models the suite runs on: the conftest's tiny test architectures of the four variants and the shipped vivit_motion
# (its tagged name is what timm's include_tags parametrisations use).
SUITE_MODELS = ["test_vivit", "test_vivit_fe", "test_vivit_fsa", "test_vivit_fdp", "vivit_motion",
                "vivit_motion.synthetic"]
THIS = "tests/test_timm_suite.py"

# timm tests that vit_tiny_patch16_224 passes but that hard-code 2-D images: the vivit test stating the same property
# on B x C x T x H x W clips.
FIVE_D = {
    "test_model_forward_intermediates_features":
        "reads timm's 2-D `Format` enum, which has no `NCTHW`: "
        f"`{THIS}::test_features_only_getter_gives_5d_maps_of_the_feature_info_sizes`",
    "test_model_forward_intermediates":
        "asks for `output_fmt='NCHW'`: "
        f"`{THIS}::test_forward_intermediates_gives_5d_maps_and_the_forward_features`",
}
NOT_APPLICABLE = {
    "test_model_forward_torchscript": "TorchScript: not supported (creation with `scriptable=True` raises a "
                                      "RuntimeError naming torch.compile / torch.export / torch.fx instead)",
    "test_model_forward_fx_torchscript": "TorchScript of the fx graph: not supported (see above)",
}
# Why timm's file sends no ViT (so no vivit model) to a test function.
NOT_ROUTED = {
    "test_model_default_cfgs": "timm excludes its ViTs (`NON_STD_FILTERS`): 2-D pooled-map shapes; ViTs run "
                               "`test_model_default_cfgs_non_std`",
    "test_model_forward_features": "timm excludes its ViTs (`EXCLUDE_FEAT_FILTERS`); ViTs run the intermediates tests",
    "test_model_features_pretrained": "timm excludes its ViTs (`NON_STD_FILTERS`)",
    "test_model_inference": "only timm's `test_*` models with reference tensors on the Hugging Face Hub",
}
# Tests of named timm models whose property vivit states in its own tests.
COUNTERPARTS = {
    "test_model_init_weights_after_to_empty":
        "tests/model/test_model_contracts.py::test_init_weights_after_meta_creation_and_to_empty_sets_every_tensor",
    "test_swin_family_set_input_size": "tests/model/test_input_size.py (set_input_size, dynamic_input_size)",
    "test_reset_classifier_keeps_pool":
        "tests/model/test_model_contracts.py::test_global_pool_empty_at_creation_equals_reset_classifier",
    "test_eva_reset_classifier_removes_attention_pool":
        "tests/model/test_model_contracts.py::test_global_pool_empty_returns_unpooled_tokens_like_timm_vit",
}


# ------------------------------------------------------------------------------------------------ fetching timm's file
def _cache_dir(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)
    return Path(cache.mkdir("timm-sdist")) if cache is not None else Path(tempfile.gettempdir()) / "vivit-timm-sdist"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def timm_test_file(request: pytest.FixtureRequest) -> Path:
    """``tests/test_models.py`` of the installed timm version, from its sdist (downloaded once, then cached)."""
    version = timm.__version__
    target = _cache_dir(request.config) / f"timm-{version}" / "test_models.py"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
               f"timm=={version}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            _unavailable(f"`{' '.join(cmd)}` timed out")
        sdists = list(Path(tmp).glob("timm-*.tar.gz"))
        if proc.returncode or not sdists:
            _unavailable(f"could not download timm {version}'s sdist: {proc.stderr.strip()[-500:]}")
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/tests/test_models.py")), None)
            if member is None:
                pytest.fail(f"timm {version}'s sdist has no tests/test_models.py")
            partial = Path(tmp) / "test_models.py"
            partial.write_bytes(tar.extractfile(member).read())
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)  # a killed run never leaves a half-written file
    return target


def _test_functions(path: Path) -> list[str]:
    """Every ``test_*`` function timm's file defines (module level, or under its ``if`` guards)."""
    tree = ast.parse(path.read_text())
    return [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
            and not any(node in getattr(parent, "body", []) for parent in ast.walk(tree)
                        if isinstance(parent, ast.FunctionDef | ast.ClassDef))]


def _run_suite(test_file: Path, run_dir: Path, models: list[str]) -> dict[str, dict[str, str]]:
    """Run timm's file on ``models``; ``{test function: {model: "passed" | "failed" | "skipped"}}``."""
    shutil.copy(test_file, run_dir / "test_models.py")
    shutil.copy(Path(__file__).with_name("timm_suite_conftest.py"), run_dir / "conftest.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(VIVIT_TIMM_SUITE_MODELS=",".join(models), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])))
    report = run_dir / "report.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
                           "--rootdir", str(run_dir), f"--junitxml={report}", "test_models.py"],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=900)
    if not report.is_file():
        pytest.fail(f"timm's test file did not run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    results: dict[str, dict[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        function, _, params = case.get("name").partition("[")
        model = params.rstrip("]").split("-")[-1]  # ids are "[batch-model]" or "[model]"; no timm name has a "-"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        results.setdefault(function, {})[model] = outcome
    return results


# ------------------------------------------------------------------------------------------------------- the table
def _vit_cell(outcomes: dict[str, str]) -> str:
    vit = [o for m, o in outcomes.items() if m.split(".")[0] == VIT]
    if not vit:
        return "not routed"
    return "passed" if all(o == "passed" for o in vit) else "failed" if "failed" in vit else "skipped"


def _vivit_cell(function: str, outcomes: dict[str, str]) -> str:
    ran = {m: o for m, o in outcomes.items() if m.split(".")[0] != VIT}
    if function in FIVE_D:
        return f"5-D equivalent: {FIVE_D[function]}"
    if function in NOT_APPLICABLE:
        return f"not applicable: {NOT_APPLICABLE[function]}"
    if not ran:
        reason = NOT_ROUTED.get(function, "tests named timm models, not `vit_tiny_patch16_224`")
        if function in COUNTERPARTS:
            reason += f"; vivit's own: `{COUNTERPARTS[function]}`"
        return f"not applicable: {reason}"
    passed = sorted(m for m, o in ran.items() if o == "passed")
    assert len(passed) == len(ran), f"{function}: vivit models failed or skipped: {ran}"
    return f"pass ({', '.join(f'`{m}`' for m in passed)})"


def _table(functions: list[str], results: dict[str, dict[str, str]], vit_column: dict[str, str]) -> str:
    rows = ["| timm test | `vit_tiny_patch16_224` | vivit |", "| --- | --- | --- |"]
    cells = [_vivit_cell(function, results.get(function, {})) for function in functions]
    for function, cell in zip(functions, cells, strict=True):
        rows.append(f"| `{function}` | {vit_column.get(function, 'not run')} | {cell} |")
    count = {kind: sum(c.startswith(kind) for c in cells) for kind in ("pass", "5-D", "not applicable")}
    vit_passed = sum(vit_column.get(f) == "passed" for f in functions)
    rows.append(f"\n{len(functions)} test functions: vivit passes {count['pass']}, states {count['5-D']} on 5-D clips, "
                f"{count['not applicable']} do not apply. `vit_tiny_patch16_224` passes {vit_passed}.")
    return "\n".join(rows)


def _doc_table() -> str:
    text = DOC.read_text()
    assert TABLE_START in text and TABLE_END in text, f"{DOC} lacks the {TABLE_START} ... {TABLE_END} table"
    return text.split(TABLE_START)[1].split(TABLE_END)[0].strip()


def _doc_vit_column() -> dict[str, str]:
    cells = {}
    for line in _doc_table().splitlines()[2:]:
        if not line.startswith("|"):
            continue
        function, vit = (c.strip() for c in line.strip("|").split("|")[:2])
        cells[function.strip("`")] = vit
    return cells


def test_timm_suite_results_match_the_docs_table(timm_test_file: Path, tmp_path: Path) -> None:
    with_vit = os.environ.get("VIVIT_TIMM_SUITE_VIT") == "1"
    results = _run_suite(timm_test_file, tmp_path, SUITE_MODELS + ([VIT] if with_vit else []))
    functions = _test_functions(timm_test_file)
    assert set(results) <= set(functions)
    if with_vit:
        vit_column = {f: _vit_cell(results.get(f, {})) for f in functions}
    else:
        vit_column = _doc_vit_column()  # measured with VIVIT_TIMM_SUITE_VIT=1, kept from the doc
    # Every test timm's ViT passes is passed by vivit's models, or stated on 5-D clips, or is TorchScript.
    for function in functions:
        if vit_column.get(function) == "passed":
            cell = _vivit_cell(function, results.get(function, {}))
            assert cell.startswith(("pass", "5-D equivalent", "not applicable: TorchScript")), (function, cell)
    table = _table(functions, results, vit_column)
    if os.environ.get("VIVIT_UPDATE_DOCS") == "1":
        text = DOC.read_text()
        head, rest = text.split(TABLE_START)
        DOC.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{rest.split(TABLE_END)[1]}")
    assert _doc_table() == table, f"docs table out of date; run with VIVIT_UPDATE_DOCS=1. Expected:\n{table}"


# ------------------------------------------------------------------------------------------- 5-D equivalents
_TINY = dict(img_size=32, num_frames=4, tubelet_size=(2, 8, 8), embed_dim=32, depth=3, num_heads=2, mlp_dim=64,
             temporal_depth=1)
# Registered architectures of each variant, shrunk to the conftest's test_vivit* sizes; and the shipped vivit_motion.
MODELS_5D = {
    "spacetime": ("vivit_ti_16x2", _TINY),
    "factorized_encoder": ("vivit_ti_16x2_fe", _TINY),
    "factorized_self_attention": ("vivit_ti_16x2_fsa", _TINY),
    "factorized_dot_product": ("vivit_s_16x2_fdp", _TINY),
    "vivit_motion": ("vivit_motion", {}),
}


def _clip(model: torch.nn.Module, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


@pytest.mark.parametrize("key", list(MODELS_5D))
def test_features_only_getter_gives_5d_maps_of_the_feature_info_sizes(key: str) -> None:
    """timm's test_model_forward_intermediates_features, on B x C x T x H x W clips and NCTHW maps."""
    name, kwargs = MODELS_5D[key]
    model = timm.create_model(name, pretrained=False, features_only=True, feature_cls="getter", **kwargs).eval()
    channels, reduction = model.feature_info.channels(), model.feature_info.reduction()
    temporal = model.feature_info.get("temporal_reduction")
    x = _clip(model)
    size_t, size_h, size_w = x.shape[2:]
    outputs = model(x)
    assert len(channels) == len(outputs)
    for e, r, rt, o in zip(channels, reduction, temporal, outputs, strict=True):
        assert o.ndim == 5 and e == o.shape[1]  # B x D x T' x H' x W'
        assert o.shape[2] <= math.ceil(size_t / rt) + 1
        assert o.shape[3] <= math.ceil(size_h / r) + 1 and o.shape[4] <= math.ceil(size_w / r) + 1
        assert o.shape[0] == 1 and not torch.isnan(o).any()


@pytest.mark.parametrize("key", list(MODELS_5D))
def test_forward_intermediates_gives_5d_maps_and_the_forward_features(key: str) -> None:
    """timm's test_model_forward_intermediates, with output_fmt='NCTHW' on B x C x T x H x W clips."""
    name, kwargs = MODELS_5D[key]
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    feature_info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    channels, reduction = feature_info.channels(), feature_info.reduction()
    temporal = feature_info.get("temporal_reduction")
    assert len(channels) == len(model.encoder.get_submodule(model.encoder.intermediate_blocks))  # one per block
    x = _clip(model)
    size_t, size_h, size_w = x.shape[2:]
    output, intermediates = model.forward_intermediates(x, output_fmt="NCTHW")
    assert len(channels) == len(intermediates)
    for e, r, rt, o in zip(channels, reduction, temporal, intermediates, strict=True):
        assert o.ndim == 5 and e == o.shape[1]
        assert o.shape[2] <= math.ceil(size_t / rt) + 1
        assert o.shape[3] <= math.ceil(size_h / r) + 1 and o.shape[4] <= math.ceil(size_w / r) + 1
        assert o.shape[0] == 1 and not torch.isnan(o).any()
    torch.testing.assert_close(output, model.forward_features(x), rtol=1e-5, atol=1e-8)
    model.set_grad_checkpointing()
    output3, _ = model.forward_intermediates(x, output_fmt="NCTHW")
    torch.testing.assert_close(output, output3, rtol=1e-4, atol=1e-5)


def test_unavailable_timm_sdist_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI: no sdist"):
        _unavailable("no sdist")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no sdist"):
        _unavailable("no sdist")
