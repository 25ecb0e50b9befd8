"""A live timeline (a stream URL, ``--follow``) stays live: windows too far behind are skipped, counted and said."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

import vivit  # noqa: E402
from vivit.data.stream import VideoStream, sliding_windows  # noqa: E402
from vivit.data.synthetic import make_sequence  # noqa: E402
from vivit.data.video import write_video  # noqa: E402
from vivit.model.vivit import ViViT  # noqa: E402
from vivit.tasks.timeline import LiveClock  # noqa: E402

FPS = 32  # vivit_motion's 16-frame window is 0.5 s here, its default step 0.25 s
SLEEP = 0.6  # seconds each window's forward takes at least: 2.4x slower than the video


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """2 s of motion (7 windows) in Matroska, which can be followed."""
    frames = make_sequence([0, 3, 5, 1], np.random.default_rng(3), frames_each=16, size=32)
    return write_video(tmp_path_factory.mktemp("live") / "recording.mkv", frames.repeat(2, 1).repeat(2, 2), fps=FPS)


def test_a_model_slower_than_the_video_skips_windows_counts_them_and_prints_its_delay(recording, tmp_path, capsys,
                                                                                   monkeypatch):
    from tests.tasks.test_timeline import TORCH_FLOAT32, run_cli

    model = vivit.create_model("vivit_motion", pretrained=True).eval()
    dense = list(vivit.timeline(model, recording, batch_size=1, top_k=1, reuse=False))
    with VideoStream(recording) as stream:  # every window the video has, none computed
        assert len(list(sliding_windows(stream, 16, 1, 0.25))) == len(dense) == 7
    forward = ViViT.forward

    def slow(self: ViViT, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLEEP)
        return forward(self, x)

    monkeypatch.setattr(ViViT, "forward", slow)
    # Without skipping, window k (ending at 0.5 + 0.25 k s of video) starts at least 0.6 k s after the stream opened,
    # 0.35 k - 0.5 s behind the live edge: past --max-delay 0.25 from k = 3 on, so at least one window is skipped.
    rc, stdout, _ = run_cli(capsys, "timeline", recording, "--model", "vivit_motion", "--follow", "0.5", "--out",
                            tmp_path / "out", "--batch-size", "1", "--top-k", "1", "--max-delay", "0.25",
                            "--no-reuse", *TORCH_FLOAT32)
    assert rc == 0
    live = [json.loads(line) for line in (tmp_path / "out" / "windows.jsonl").read_text().splitlines()]
    skipped = len(dense) - len(live)
    assert 1 <= skipped < len(dense) - 1
    assert all(r["delay"] >= 0 for r in live)
    # Each record counts the windows skipped since the one before; the total is said at the end (trailing skips too).
    between = [r["index"] - p["index"] - 1 for p, r in zip([{"index": -1}, *live], live, strict=False)]
    assert [r.get("skipped", 0) for r in live] == between
    assert f"{skipped} windows skipped to stay live" in stdout
    printed = [line for line in stdout.splitlines() if "behind live" in line]
    assert len(printed) == len(live)
    # A skipped window does not change the others: those computed are the file's own windows.
    by_index = {r["index"]: r for r in dense}
    assert [{k: r[k] for k in ("index", "start", "end", "top")} for r in live] == [by_index[r["index"]] for r in live]


def test_a_source_read_faster_than_real_time_is_never_behind():
    clock = LiveClock(0.0)
    clock.opened = time.monotonic()
    window = type("W", (), {"end": 1e3})()
    assert clock.delay(window.end) == 0.0 and not clock.skip(window) and clock.skipped == 0
    clock.opened -= 2e3  # opened 2000 s ago: a window ending at 1000 s is 1000 s behind the edge
    assert clock.delay(window.end) >= 1e3 and clock.skip(window) and clock.skipped == 1


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1"])
def test_bad_max_delay_is_one_clear_error(recording, bad):
    model = vivit.create_model("vivit_motion", pretrained=True).eval()
    with pytest.raises(ValueError, match="max_delay must be a number of seconds"):
        next(vivit.timeline(model, recording, max_delay=bad))
