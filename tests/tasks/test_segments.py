"""Segments follow the changes of a generated video; transition windows make no segment unless confident."""

from __future__ import annotations

import pytest

pytest.importorskip("av")

from tests.tasks import test_timeline  # noqa: E402
from vivit.data.synthetic import MOTION_CLASSES  # noqa: E402
from vivit.tasks.timeline import segments, timeline  # noqa: E402

motion_video, motion_model = test_timeline.motion_video, test_timeline.motion_model  # the same fixtures


def _win(i: int, label: str, score: float = 1.0) -> dict:
    """Window ``i`` of a 2 s window every 1 s (the default step: one window straddles each change)."""
    return {"index": i, "start": float(i), "end": i + 2.0, "top": [{"label": label, "score": score}]}


def test_an_unconfident_transition_window_goes_to_its_neighbours_who_meet_at_its_centre():
    labels = ["a", "a", "a", "x", "b", "b", "b"]
    windows = [_win(i, lab, 0.6 if lab == "x" else 1.0) for i, lab in enumerate(labels)]
    segs = segments(windows)
    assert [(s["label"], s["start"], s["end"]) for s in segs] == [("a", 0.0, 4.0), ("b", 4.0, 8.0)]
    assert [s["score"] for s in segs] == [1.0, 1.0]  # the transition's score counts for neither


def test_a_confident_one_window_segment_is_kept():
    windows = [_win(i, lab, 0.999) for i, lab in enumerate(["a", "a", "x", "b", "b"])]
    assert [s["label"] for s in segments(windows)] == ["a", "x", "b"]
    assert [s["label"] for s in segments(windows, confident=1.01)] == ["a", "b"]


def test_a_transition_between_the_same_label_joins_it_and_runs_longer_than_a_transition_stay():
    windows = [_win(i, lab, 0.5) for i, lab in enumerate(["a", "a", "x", "a", "y", "y", "a"])]
    assert [s["label"] for s in segments(windows)] == ["a", "y", "a"]
    # a smaller step: up to 3 windows straddle one change
    fine = [{**_win(i, lab, 0.5), "start": i / 2, "end": i / 2 + 2.0}
            for i, lab in enumerate(["a"] * 4 + ["x"] * 3 + ["b"] * 4 + ["y"] * 4 + ["c"] * 4)]
    assert [s["label"] for s in segments(fine)] == ["a", "b", "y", "c"]


def test_generated_video_segments_match_its_changes(motion_video, motion_model):
    path, labels = motion_video
    windows = list(timeline(motion_model, path))
    segs = segments(windows)  # default settings
    assert len(labels) <= len(segs) <= 1.2 * len(labels)
    step = windows[1]["start"] - windows[0]["start"]
    changes = [test_timeline.SECONDS_EACH * i for i in range(1, len(labels))]
    assert all(any(abs(s["start"] - c) <= step + 1e-6 for s in segs[1:]) for c in changes)
    assert {s["label"] for s in segs} == {MOTION_CLASSES[c] for c in labels}
