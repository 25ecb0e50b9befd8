"""vivit.tasks.predict: views are batched and their logits averaged, no softmax first (SPEC 4.2)."""

from __future__ import annotations

import math

import pytest
import torch

import vivit
from tests.conftest import TINY
from vivit.tasks.predict import default_views, predict_video, predict_views


class _Recorder(torch.nn.Module):
    """Logits = per-view mean value times a fixed vector; remembers batch sizes and its mode."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([1.0, -2.0, 30.0]))
        self.batches: list[int] = []
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        self.modes.append(self.training)
        return x.mean(dim=(1, 2, 3, 4))[:, None] * self.scale


def test_logits_are_averaged_over_views_in_batches():
    model = _Recorder()
    clips = torch.arange(7, dtype=torch.float32).view(7, 1, 1, 1, 1).expand(7, 3, 2, 4, 4)
    logits = predict_views(model, clips, batch_size=3)
    assert model.batches == [3, 3, 1]
    torch.testing.assert_close(logits, 3.0 * model.scale.detach())  # mean of 0..6 times the vector
    per_view = predict_views(model, clips, batch_size=7, reduce=False)
    assert per_view.shape == (7, 3)
    torch.testing.assert_close(per_view.mean(0), logits)


def test_the_mean_is_of_logits_not_probabilities():
    model = _Recorder()
    clips = torch.stack([torch.full((3, 2, 4, 4), v) for v in (1.0, 10.0)])
    logits = predict_views(model, clips)
    torch.testing.assert_close(logits, 5.5 * model.scale.detach())  # raw scores: one is negative, none sum to 1
    assert logits[1] < 0


def test_the_model_runs_in_eval_mode_and_gets_its_mode_back():
    model = _Recorder().train()
    predict_views(model, torch.zeros(2, 3, 2, 4, 4))
    assert model.modes == [False] and model.training


def test_views_must_be_five_dimensional():
    with pytest.raises(ValueError, match=r"expected views \(V, C, T, H, W\)"):
        predict_views(_Recorder(), torch.zeros(3, 2, 4, 4))


def test_predict_video_runs_a_vivit_on_a_real_file(tmp_path):
    pytest.importorskip("av")
    from tests.videos import write_video

    path = write_video(tmp_path / "clip.mp4", 30, 48, 64)
    model = vivit.create_model("vivit_ti_16x2", num_classes=5, **TINY)
    torch.nn.init.normal_(model.head.weight)
    from vivit.data.video import multi_view_clips

    clips = multi_view_clips(path, model, "2x3")
    assert clips.shape == (6, 3, 4, 32, 32)
    logits = predict_video(model, path, "2x3", batch_size=4)
    assert logits.shape == (5,)
    torch.testing.assert_close(logits, model.eval()(clips).mean(0), rtol=1e-5, atol=1e-5)
    # the decoder is decoder= (backend names what runs the model): the same views through PyAV by name
    torch.testing.assert_close(predict_video(model, path, "2x3", batch_size=4, decoder="pyav"), logits)
    with pytest.raises(ValueError, match="opencv"):
        predict_video(model, path, "2x3", decoder="opencv")


def test_default_views_follow_the_weights_evaluation_protocol():
    model = _Recorder()
    assert default_views(model) == (4, 3)  # no pretrained cfg: the paper's Kinetics protocol
    model.pretrained_cfg = {"eval_views": "4x1"}  # EPIC-Kitchens
    assert default_views(model) == (4, 1)


def test_top_k_scores_each_part_of_a_split_head_with_its_own_softmax():
    from vivit.tasks.predict import top_k

    logits = torch.tensor([2.0, 0.0, 1.0, 5.0, 5.0])
    nouns, verbs = top_k(logits, 2, ["a", "b", "c", "x", "y"], class_splits=(3, 2))
    assert [t["label"] for t in nouns] == ["a", "c"] and [t["index"] for t in verbs] == [3, 4]
    assert sum(t["score"] for t in verbs) == pytest.approx(1.0)  # the verbs' softmax ignores the nouns
    whole = torch.tensor([2.0, 0.0, 1.0, 5.0, 4.0])
    (single,) = top_k(whole, 1)
    expected = math.exp(5.0) / sum(math.exp(v) for v in whole.tolist())
    assert single == [{"label": "3", "index": 3, "score": pytest.approx(expected, abs=1e-6)}]
