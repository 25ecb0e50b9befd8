"""Model 2 timelines encode each tubelet-time slice once (vivit.tasks.reuse) and give the dense window scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("av")

import vivit  # noqa: E402
from tests.tasks import test_timeline  # noqa: E402
from vivit.data.transforms import eval_transform  # noqa: E402
from vivit.tasks.reuse import SliceReuse, slice_reuse  # noqa: E402
from vivit.tasks.timeline import timeline  # noqa: E402

TORCH_FLOAT32, run_cli = test_timeline.TORCH_FLOAT32, test_timeline.run_cli
motion_video, motion_model = test_timeline.motion_video, test_timeline.motion_model  # the same fixtures
# Same slices in other batch shapes: float32 BLAS rounds a few rows differently (measured <= 2e-7 on logits).
TOL = 1e-5


def _tiny(variant: str = "factorized_encoder", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = vivit.create_model(f"vivit_ti_16x2{'_fe' if variant == 'factorized_encoder' else ''}", depth=2,
                               temporal_depth=2, img_size=32, num_frames=8, num_classes=6, **kwargs).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_slice_tokens_of_a_clip_give_its_logits_exactly():
    model = _tiny()
    x = torch.randn(3, 3, 8, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model.forward_from_slices(model.forward_slices(x)), model(x))
        one_by_one = torch.cat([model.forward_slices(x[:, :, i:i + 2]) for i in range(0, 8, 2)], 1)
        torch.testing.assert_close(model.forward_from_slices(one_by_one), model(x), atol=TOL, rtol=TOL)


def test_slice_tokens_compose_with_token_merging():
    model = _tiny(token_merging=2)
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model.forward_from_slices(model.forward_slices(x)), model(x))


def test_slice_tokens_are_refused_where_a_slice_is_not_encoded_alone():
    with pytest.raises(ValueError, match="Model 2"):
        _tiny("spacetime").forward_slices(torch.randn(1, 3, 2, 32, 32))
    model = _tiny()
    with pytest.raises(ValueError, match="multiple of 2"):
        model.forward_slices(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="B x 4 x 192"):
        model.forward_from_slices(torch.randn(1, 3, 192))
    assert slice_reuse(_tiny("spacetime"), None, lambda x: x, None, torch.float32) is None


def test_a_torch_optimized_run_reuses_slices_with_the_weights_it_runs():
    """vivit.optimize's torch path on CPU runs its own bfloat16 copy (no autocast): reuse runs that copy."""
    model = _tiny()
    fast = vivit.optimize(model, torch.bfloat16, backend="torch")
    reuse = slice_reuse(model, fast, lambda x: x, None, torch.float32)
    assert reuse is not None and reuse.model is fast.model and reuse.dtype == torch.bfloat16


def test_each_slice_is_encoded_once_and_memory_holds_one_window():
    model = _tiny()
    model.pretrained_cfg = {"input_size": (3, 8, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    transform = eval_transform(model)
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8))
    windows = [frames[s:s + 8] for s in range(0, 17, 4)]  # 5 windows, step half a window: 12 distinct slices
    reuse = SliceReuse(model, transform, None, torch.float32)
    logits = torch.cat([reuse(windows[:3]), reuse(windows[3:])])
    assert (reuse.computed, reuse.reused) == (12, 20 - 12)
    assert len(reuse.cache) == 4  # the last window's slices only
    dense = torch.stack([transform(w) for w in windows])
    with torch.inference_mode():
        torch.testing.assert_close(logits, model(dense), atol=TOL, rtol=TOL)


def _scores(records: list[dict]) -> list[tuple]:
    return [(r["index"], r["start"], r["end"], [t["label"] for t in r["top"]]) for r in records], \
        np.array([[t["score"] for t in r["top"]] for r in records])


@pytest.mark.parametrize("step", [None, 0.5])
def test_timeline_scores_equal_with_and_without_reuse(motion_video, motion_model, step):
    path, _ = motion_video
    reused = list(timeline(motion_model, path, step=step, batch_size=3))
    dense = list(timeline(motion_model, path, step=step, batch_size=3, reuse=False))
    (a, sa), (b, sb) = _scores(reused), _scores(dense)
    assert a == b and len(a) > 10
    np.testing.assert_allclose(sa, sb, atol=TOL, rtol=0)


@pytest.mark.parametrize("batch_size", [3, 8])
def test_reused_logits_are_bit_identical_to_whole_windows_at_the_default_step(motion_video, motion_model, batch_size):
    from vivit.data.stream import VideoStream, sliding_windows
    from vivit.tasks.timeline import _forward, window_plan

    path, _ = motion_video
    transform = eval_transform(motion_model)
    with VideoStream(path, transform.resize_size, transform.interpolation) as stream:
        windows = list(sliding_windows(stream, *window_plan(motion_model, stream.info.fps)))
    reuse = SliceReuse(motion_model, transform, None, torch.float32)
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        with torch.inference_mode():
            reused = reuse([w.frames for w in batch])
            dense = _forward(motion_model, None, batch, transform, None, torch.float32)
        assert torch.equal(reused, dense), (start, (reused - dense).abs().max())
    assert reuse.reused > 0 and reuse.computed < len(windows) * motion_model.grid_size[0]


def test_windows_without_overlap_are_bit_identical(motion_video, motion_model):
    path, _ = motion_video  # step = one window: every slice is new, computed in the dense path's batch shapes
    assert list(timeline(motion_model, path, step=2.0)) == list(timeline(motion_model, path, step=2.0, reuse=False))


def test_cli_no_reuse_computes_whole_windows_with_the_same_labels(motion_video, tmp_path, capsys):
    path, _ = motion_video
    outs = {}
    for flag in ((), ("--no-reuse",)):
        out = tmp_path / ("dense" if flag else "reuse")
        rc, _, err = run_cli(capsys, "timeline", path, "--model", "vivit_motion", "--out", out, *TORCH_FLOAT32,
                             "--stop-after", "6", "--batch-size", "3", *flag)  # stops after whole batches
        assert rc == 3, err
        outs[flag] = [json.loads(line) for line in (out / "windows.jsonl").read_text().splitlines()]
    (a, sa), (b, sb) = _scores(outs[()]), _scores(outs[("--no-reuse",)])
    assert a == b and len(a) == 6
    np.testing.assert_allclose(sa, sb, atol=TOL, rtol=0)


def _openvino_importable() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _openvino_importable(), reason='OpenVINO is the optional extra vivit[openvino]')
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_openvino_reuses_slices_with_the_spatial_half_converted_on_its_own(motion_video, motion_model, dtype):
    path, _ = motion_video
    fast = vivit.optimize(motion_model, dtype, backend="openvino")
    reuse = slice_reuse(motion_model, fast, eval_transform(motion_model), None, torch.float32)
    assert reuse is not None and reuse.spatial is not None and reuse.spatial.backend == "openvino"
    assert reuse.spatial.dtype == fast.dtype
    # converted and compiled once per optimized model: the next video (a listing) takes the same one
    assert slice_reuse(motion_model, fast, eval_transform(motion_model), None, torch.float32).spatial is reuse.spatial
    reused = list(timeline(motion_model, path, run=fast, batch_size=3))
    dense = list(timeline(motion_model, path, run=fast, batch_size=3, reuse=False))
    (a, sa), (b, sb) = _scores(reused), _scores(dense)
    assert len(a) > 10
    if fast.dtype == torch.float32:  # float32, and bfloat16 on a CPU without it natively (OpenVINO runs float32)
        assert a == b
        np.testing.assert_allclose(sa, sb, atol=TOL, rtol=0)  # measured: 1e-6, the scores' rounding unit
    else:  # native bfloat16: the temporal half runs in float32 with reuse, in bfloat16 without: bfloat16's 3 digits
        np.testing.assert_allclose(sa[:, 0], sb[:, 0], atol=3e-2, rtol=0)
