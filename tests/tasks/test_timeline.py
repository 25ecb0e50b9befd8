"""``vivit timeline``: sliding windows over a whole video, segments, resumption, bounded memory, bad input."""

from __future__ import annotations

import json
import os
import re
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

import vivit  # noqa: E402
from tests.test_cli import _peak_rss_mb  # noqa: E402  (the same peak-RSS harness)
from vivit.data.stream import VideoStream, sliding_windows  # noqa: E402
from vivit.data.synthetic import MOTION_CLASSES, make_sequence  # noqa: E402
from vivit.data.video import VideoReadError, write_video  # noqa: E402
from vivit.tasks.timeline import segments, timeline_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# The CLI's backend and dtype default to auto (OpenVINO, bfloat16 where the CPU has it); tests that compare its files
# with vivit.timeline(model) in float32 torch pin these (and so print no "--dtype auto" note).
TORCH_FLOAT32 = ("--backend", "torch", "--dtype", "float32")
FPS, SECONDS_EACH = 8, 3  # vivit_motion's window: 16 frames at stride 1 = 2 s; the default step is 1 s


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``vivit ARGS`` in this process (a subprocess would import torch again for every call): status, stdout, stderr."""
    from vivit.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def motion_video(tmp_path_factory) -> tuple[Path, list[int]]:
    """A video whose motion class changes every 3 s: each class once, in a random order, then five more."""
    rng = np.random.default_rng(7)
    labels = [int(c) for c in rng.permutation(len(MOTION_CLASSES))] + [int(c) for c in rng.integers(0, 10, 5)]
    labels = [c for i, c in enumerate(labels) if i == 0 or c != labels[i - 1]]  # every 3 s a change
    frames = make_sequence(labels, rng, frames_each=FPS * SECONDS_EACH, size=32)
    frames = frames.repeat(2, axis=1).repeat(2, axis=2)  # 64 x 64: what a codec keeps of a 32-pixel shape
    path = write_video(tmp_path_factory.mktemp("motion") / "changes.mp4", frames, fps=FPS)
    return path, labels


@pytest.fixture(scope="module")
def motion_model():
    return vivit.create_model("vivit_motion", pretrained=True).eval()


def test_timeline_labels_windows_and_finds_every_change(motion_video, motion_model, tmp_path):
    path, labels = motion_video
    result = timeline_video(path, motion_model, tmp_path, min_segment=1.5)
    windows = [json.loads(line) for line in (tmp_path / "windows.jsonl").read_text().splitlines()]
    assert result["windows"] == len(windows) and [w["index"] for w in windows] == list(range(len(windows)))
    inside = [w for w in windows if w["start"] // SECONDS_EACH == (w["end"] - 1e-6) // SECONDS_EACH]
    right = [w["top"][0]["label"] == MOTION_CLASSES[labels[int(w["start"] // SECONDS_EACH)]] for w in inside]
    assert len(inside) >= len(labels) and sum(right) >= 0.9 * len(inside)
    assert all(len(w["top"]) == 5 and w["top"][0]["score"] >= w["top"][1]["score"] for w in windows)
    segs = json.loads((tmp_path / "segments.json").read_text())
    assert [s["label"] for s in segs] == [MOTION_CLASSES[c] for c in labels]
    changes = [SECONDS_EACH * i for i in range(1, len(labels))]
    assert all(abs(s["start"] - c) <= 1.0 for s, c in zip(segs[1:], changes, strict=True))  # within one step
    assert (tmp_path / "timeline.png").stat().st_size > 0


def test_windows_follow_the_model_clip_and_the_step(motion_video, motion_model):
    path, _ = motion_video
    records = list(vivit.timeline(motion_model, path, step=2.5, top_k=2))
    assert [r["start"] for r in records[:3]] == [0.0, 2.5, 5.0]  # 8 fps: 2.5 s is frame 20
    assert all(r["end"] - r["start"] == pytest.approx(16 / FPS) for r in records)
    three = next(vivit.timeline(motion_model, path, crops=3, top_k=1))
    assert three["start"] == 0.0 and len(three["top"]) == 1


def test_killed_run_resumes_with_identical_outputs(motion_video, tmp_path, capsys):
    path, _ = motion_video
    common = ["timeline", path, "--model", "vivit_motion", "--batch-size", "4", "--min-segment", "1.5"]
    assert run_cli(capsys, *common, "--out", tmp_path / "whole")[0] == 0
    assert run_cli(capsys, *common, "--out", tmp_path / "resumed", "--stop-after", "6")[0] == 3
    # it leaves at the end of the batch that reaches 6 windows: no window computed is thrown away
    assert len((tmp_path / "resumed" / "windows.jsonl").read_text().splitlines()) == 8
    with open(tmp_path / "resumed" / "windows.jsonl", "a") as f:
        f.write('{"index": 8, "sta')  # the kill also cut a line in half
    assert run_cli(capsys, *common, "--out", tmp_path / "resumed")[0] == 0
    for name in ("windows.jsonl", "segments.json"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "whole" / name).read_text()
    rc, _, err = run_cli(capsys, *common, "--out", tmp_path / "resumed", "--step", "0.5")
    assert rc == 1 and "other settings" in err and "step" in err


def test_short_video_gives_one_looped_window(motion_model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = write_video(tmp_path / "short.mp4", make_sequence([2], rng, frames_each=6, size=32), fps=FPS)
    records = list(vivit.timeline(motion_model, path))
    assert len(records) == 1 and records[0]["padded"] and records[0]["start"] == 0.0
    rc, _, err = run_cli(capsys, "timeline", path, "--model", "vivit_motion", "--out", tmp_path / "out")
    assert rc == 0 and "shorter than one window" in err


def test_video_without_a_video_stream_is_one_clear_error(tmp_path, capsys):
    from tests.videos import write_audio_only

    rc, _, err = run_cli(capsys, "timeline", write_audio_only(tmp_path / "tone.wav"), "--model", "vivit_motion",
                         "--out", tmp_path / "out", *TORCH_FLOAT32)
    errors = [line for line in err.strip().splitlines() if not line.startswith("vivit timeline: backend ")]
    assert rc == 1 and len(errors) == 1 and "no video stream" in err
    assert not (tmp_path / "out").exists()


def test_broken_stream_keeps_the_windows_before_it(motion_video, motion_model, tmp_path):
    path, _ = motion_video
    with VideoStream(path) as stream:
        frames = np.stack([stream.to_array(f) for _, f in stream.frames()])
    mkv = write_video(tmp_path / "whole.mkv", frames, fps=FPS)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])
    whole = list(vivit.timeline(motion_model, mkv))
    result = timeline_video(cut, motion_model, tmp_path / "out")
    assert result["error"] and "truncated" in result["error"]
    kept = [json.loads(line) for line in (tmp_path / "out" / "windows.jsonl").read_text().splitlines()]
    assert 0 < len(kept) < len(whole) and kept == whole[:len(kept)]
    assert json.loads((tmp_path / "out" / "segments.json").read_text())


def test_variable_frame_rate_windows_use_real_timestamps(tmp_path):
    from tests.videos import write_video as write_pattern

    pts = [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 20, 21, 22, 23, 24, 25, 26, 27]  # time base 1/10: gaps of 0.5 and 0.7 s
    path = write_pattern(tmp_path / "vfr.mkv", num_frames=len(pts), codec="mjpeg_mkv", fps=10, pts=pts,
                         time_base=Fraction(1, 10))
    with VideoStream(path) as stream:
        windows = list(sliding_windows(stream, 4, 1, 0.5))
    # a window starts at the first frame at or after k * 0.5 s and ends where the frame after its 4 frames starts
    assert [(w.start, w.end) for w in windows] == [(0.0, 0.4), (0.5, 1.3), (1.0, 2.0), (2.0, 2.4)]
    assert [w.index for w in windows] == [0, 1, 2, 4]  # the 0.7 s gap starts one window, not two on one frame


def test_stream_keeps_only_the_frames_of_windows_in_progress(motion_video):
    path, _ = motion_video
    with VideoStream(path, short_side=32) as stream:
        sizes = [w.frames.shape for w in sliding_windows(stream, 16, 2, 4.0)]
    assert sizes and all(s == (16, 32, 32, 3) for s in sizes)


def test_segments_merge_smooth_and_absorb():
    def win(i: int, label: str, score: float = 0.9) -> dict:
        return {"index": i, "start": float(i), "end": i + 2.0, "top": [{"label": label, "score": score}]}

    labels = ["a", "a", "b", "a", "a", "c", "c", "c"]
    windows = [win(i, lab) for i, lab in enumerate(labels)]  # confident=0: "b" counts as a segment, no transition
    assert [s["label"] for s in segments(windows, confident=0)] == ["a", "b", "a", "c"]
    absorbed = segments(windows, min_segment=1.5, confident=0)
    assert [(s["start"], s["end"], s["label"]) for s in absorbed] == [(0.0, 5.5, "a"), (5.5, 9.0, "c")]
    assert [s["label"] for s in segments(windows, smooth=3, confident=0)] == ["a", "c"]
    assert segments([]) == []
    with pytest.raises(ValueError, match="smooth"):
        segments(windows, smooth=0)


def test_listing_does_every_video_into_its_own_folder(motion_video, tmp_path, capsys):
    path, _ = motion_video
    rng = np.random.default_rng(1)
    other = write_video(tmp_path / "other.mp4", make_sequence([0, 8], rng, frames_each=20, size=32), fps=FPS)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{path}\n{other}\n{tmp_path / 'missing.mp4'}\n")
    rc, _, err = run_cli(capsys, "timeline", listing, "--model", "vivit_motion", "--out", tmp_path / "out", "--step",
                         "2")
    assert rc == 1 and "missing.mp4" in err
    summary = json.loads((tmp_path / "out" / "timelines.json").read_text())
    assert [v["windows"] > 0 for v in summary["videos"]] == [True, True, False] and summary["num_failed"] == 1
    assert (tmp_path / "out" / "0001-other" / "segments.json").exists()


def test_a_stopped_listing_resumes_in_the_driver_and_refuses_other_settings(motion_video, tmp_path, capsys):
    # The listing runs in the dataset-job driver: run.json at the top, each video resuming inside its own folder.
    path, _ = motion_video
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{path}\n")

    def timeline(out: Path, *extra: str) -> tuple[int, str, str]:
        return run_cli(capsys, "timeline", listing, "--model", "vivit_motion", "--out", out, "--batch-size", "2",
                       *TORCH_FLOAT32, *extra)

    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert timeline(out, "--step", "2", "--stop-after", "2")[0] == 3
    assert json.loads((out / "run.json").read_text())["step"] == 2.0 and not (out / "timelines.json").exists()
    assert timeline(out, "--step", "2")[0] == 0 and timeline(fresh, "--step", "2")[0] == 0
    windows = "0000-changes/windows.jsonl"
    assert (out / windows).read_text() == (fresh / windows).read_text()
    rc, _, err = timeline(out, "--step", "1")
    assert rc == 1 and "step was 2.0, now 1.0" in err and "Traceback" not in err


def _write_long(path: Path, minutes: float) -> Path:
    """320 x 240 at 4 fps, motion clips over and over (H.264, fast to write)."""
    import av

    clip = make_sequence([0, 2, 8, 9], np.random.default_rng(0), frames_each=12, size=240)
    clip = np.concatenate([clip, clip[:, :, :80]], axis=2)  # 240 x 320
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4, options={"preset": "ultrafast", "g": "40"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        frames = [av.VideoFrame.from_ndarray(f, format="rgb24") for f in clip]
        for i in range(int(minutes * 60 * 4)):
            container.mux(stream.encode(frames[i % len(frames)]))
        container.mux(stream.encode())
    return path


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_twenty_minute_video_runs_in_bounded_memory(tmp_path):
    """20 minutes of 320 x 240 at 4 fps (1.1 GB as decoded RGB frames) peaks as a 1-minute one does, under 1.5 GB."""
    commands = [[sys.executable, "-m", "vivit", "timeline", str(_write_long(tmp_path / f"{m}.mp4", m)), "--model",
                 "vivit_motion", "--out", str(tmp_path / f"out{m}"), "--step", "30"] for m in (1, 20)]
    # children's peak is the largest so far, so the short run goes first
    one_minute_mb, twenty_minutes_mb = _peak_rss_mb(*commands, env=dict(os.environ))
    windows = (tmp_path / "out20" / "windows.jsonl").read_text().splitlines()
    assert len(windows) == 40 and json.loads(windows[-1])["start"] == pytest.approx(1170.0)
    assert twenty_minutes_mb < 1536 and twenty_minutes_mb - one_minute_mb < 100, (one_minute_mb, twenty_minutes_mb)
    print(f"peak RSS: 1 minute {one_minute_mb:.0f} MB, 20 minutes {twenty_minutes_mb:.0f} MB")


def test_no_windows_lost_or_doubled_between_batches(motion_video, motion_model):
    path, _ = motion_video
    one = list(vivit.timeline(motion_model, path, batch_size=1, top_k=1, step=2.0))
    many = list(vivit.timeline(motion_model, path, batch_size=7, top_k=1, step=2.0))
    assert [r["index"] for r in one] == [r["index"] for r in many]
    assert [r["top"][0]["label"] for r in one] == [r["top"][0]["label"] for r in many]
    assert torch.tensor([r["top"][0]["score"] for r in one]).allclose(
        torch.tensor([r["top"][0]["score"] for r in many]), atol=1e-4)


def test_bad_step_is_refused(motion_video, motion_model):
    path, _ = motion_video
    with pytest.raises(ValueError, match="at least one frame"):
        next(vivit.timeline(motion_model, path, step=0.01))
    with pytest.raises(ValueError, match="window_stride must be an integer from 1"):
        next(vivit.timeline(motion_model, path, window_stride=0))


@pytest.mark.parametrize(("option", "value", "says"), [
    ("step", float("inf"), "step must be a number of seconds above 0"),  # was accepted; every resume overflowed
    ("step", 1e308, "at most"),
    ("step", float("nan"), "step must be"),
    ("step", -1.0, "step must be"),
    ("window_stride", 10 ** 20, "window_stride must be an integer from 1 to"),  # was an OverflowError traceback
    ("batch_size", 10 ** 6, "batch_size must be an integer from 1 to"),  # was gigabytes, then out of memory
    ("follow", float("nan"), "follow must be a finite number"),  # waited forever at the end of the file
    ("top_k", 0, "top_k must be"),
])
def test_options_at_their_extremes_are_one_clear_error(motion_video, motion_model, tmp_path, option, value, says):
    path, _ = motion_video
    with pytest.raises(ValueError, match=says):
        timeline_video(path, motion_model, tmp_path / "out", **{option: value})
    assert not (tmp_path / "out").exists()


def test_windows_that_would_hold_too_many_frames_are_refused(motion_video, motion_model):
    path, _ = motion_video  # 16 frames 1000 apart, a window every frame: 16000 frames held at once
    with pytest.raises(ValueError, match="decoded frames at once"):
        next(vivit.timeline(motion_model, path, window_stride=1000, step=1 / FPS))


def test_still_image_is_refused(tmp_path, motion_model):
    path = write_video(tmp_path / "still.mp4", np.zeros((1, 32, 32, 3), np.uint8), fps=FPS)
    with pytest.raises(VideoReadError, match="single frame"):
        list(vivit.timeline(motion_model, path))


def test_stream_url_is_read_live_and_printed_window_by_window(motion_video, motion_model, tmp_path, capsys):
    import functools
    import http.server
    import threading

    source, _ = motion_video
    with VideoStream(source) as stream:
        frames = np.stack([stream.to_array(f) for _, f in stream.frames()])
    path = write_video(tmp_path / "live.mkv", frames, fps=FPS)  # Matroska streams; MP4 over HTTP needs range requests
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        rc, stdout, _ = run_cli(capsys, "timeline", url, "--model", "vivit_motion", "--out", tmp_path / "live",
                                "--top-k", "1", *TORCH_FLOAT32)
    finally:
        server.shutdown()
    assert rc == 0
    live = [json.loads(line) for line in (tmp_path / "live" / "windows.jsonl").read_text().splitlines()]
    assert all(r.pop("delay") >= 0 for r in live)  # seconds behind the live edge: the file is served at once, so 0
    assert live == list(vivit.timeline(motion_model, path, top_k=1))
    printed = [line for line in stdout.splitlines() if " s  " in line]
    assert len(printed) == len(live) and live[3]["top"][0]["label"] in printed[3]


def test_growing_file_is_followed_to_its_end(motion_video, motion_model, tmp_path):
    import threading
    import time

    source, _ = motion_video
    with VideoStream(source) as stream:
        frames = np.stack([stream.to_array(f) for _, f in stream.frames()])
    data = write_video(tmp_path / "whole.mkv", frames, fps=FPS).read_bytes()
    growing = tmp_path / "recording.mkv"
    chunk = len(data) // 8
    growing.write_bytes(data[:chunk])

    def record() -> None:  # a recorder appending to the file while it is read
        with open(growing, "ab") as f:
            for start in range(chunk, len(data), chunk):
                time.sleep(0.3)
                f.write(data[start:start + chunk])
                f.flush()

    writer = threading.Thread(target=record)
    writer.start()
    try:
        followed = list(vivit.timeline(motion_model, growing, follow=3.0, top_k=1, step=2.0))
    finally:
        writer.join()
    assert all(r.pop("delay") >= 0 for r in followed)  # written faster than real time: nothing skipped
    assert followed == list(vivit.timeline(motion_model, tmp_path / "whole.mkv", top_k=1, step=2.0))


@pytest.mark.parametrize("crops", [1, 3])
def test_a_window_is_preprocessed_as_classify_preprocesses_a_view(motion_model, tmp_path, crops):
    from vivit.tasks.predict import predict_video, top_k

    rng = np.random.default_rng(3)  # exactly one window (16 frames), wider than high so three crops differ
    frames = make_sequence([6], rng, frames_each=16, size=48)[:, 8:40].repeat(2, axis=1).repeat(2, axis=2)
    path = write_video(tmp_path / "one_window.mp4", frames, fps=FPS)
    (record,) = list(vivit.timeline(motion_model, path, crops=crops, top_k=3))
    labels = motion_model.pretrained_cfg["label_names"]
    expected = top_k(predict_video(motion_model, path, (1, crops)), 3, labels)[0]
    assert "padded" not in record and record["top"] == [{"label": t["label"], "score": t["score"]} for t in expected]


def test_corrupt_data_midway_keeps_the_windows_before_it_and_says_where(motion_video, tmp_path, capsys):
    path, _ = motion_video
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 3000] = b"\xff" * 3000  # garbage where the demuxer expects the next packets
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    rc, _, err = run_cli(capsys, "timeline", bad, "--model", "vivit_motion", "--out", tmp_path / "out", "--step", "2",
                         *TORCH_FLOAT32)
    lines = [line for line in err.strip().splitlines() if not line.startswith("vivit timeline: backend ")]
    assert rc == 1 and len(lines) == 1 and "decoding stopped after" in lines[0] and "windows before it" in lines[0]
    kept = [json.loads(line) for line in (tmp_path / "out" / "windows.jsonl").read_text().splitlines()]
    stopped_at = float(lines[0].split("decoding stopped after ")[1].split(" s")[0])
    whole = list(vivit.timeline(vivit.create_model("vivit_motion", pretrained=True), path, step=2.0))
    # every window whose frames all came before the break, and only those (a window ends one frame after its last)
    assert kept == [w for w in whole if w["end"] <= stopped_at + 1 / FPS + 1e-6] and len(kept) >= 5


def _openvino_importable() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("backend", ["torch", pytest.param("openvino", marks=pytest.mark.skipif(
    not _openvino_importable(), reason="openvino is not installed"))])
def test_the_cli_runs_the_chosen_backend_and_records_it(motion_video, motion_model, backend, tmp_path, capsys,
                                                        monkeypatch):
    monkeypatch.delenv("VIVIT_BACKEND", raising=False)  # "auto" below picks OpenVINO where it is installed
    path, _ = motion_video
    common = ["timeline", path, "--model", "vivit_motion", "--out", tmp_path, "--step", "2", "--dtype", "float32"]
    rc, _, err = run_cli(capsys, *common, "--backend", backend)
    assert rc == 0, err
    assert json.loads((tmp_path / "run.json").read_text())["backend"] == backend
    windows = [json.loads(line) for line in (tmp_path / "windows.jsonl").read_text().splitlines()]
    reference = list(vivit.timeline(motion_model, path, step=2.0))  # the plain model, float32
    assert [w["index"] for w in windows] == [r["index"] for r in reference]
    for got, want in zip(windows, reference, strict=True):
        assert [t["label"] for t in got["top"][:1]] == [t["label"] for t in want["top"][:1]]
        assert got["top"][0]["score"] == pytest.approx(want["top"][0]["score"], abs=1e-3)
    other = "auto" if backend == "torch" else "torch"
    rc, _, err = run_cli(capsys, *common, "--backend", other)
    if other == "auto" and not _openvino_importable():
        assert rc == 0  # auto is torch here: the same run, continued
    else:  # a --backend stated on the command line is checked against run.json before loading: bad usage
        assert rc == (1 if other == "auto" else 2) and "other settings" in err and "backend" in err


def test_timeline_runs_the_callable_it_is_given(motion_video, motion_model):
    path, _ = motion_video
    calls = []

    def run(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        assert x.dtype == torch.float32
        return torch.zeros(x.shape[0], motion_model.num_classes).index_fill_(1, torch.tensor([3]), 1.0)

    records = list(vivit.timeline(motion_model, path, step=2.0, batch_size=4, run=run))
    assert sum(calls) == len(records) and max(calls) == 4
    assert {r["top"][0]["label"] for r in records} == {motion_model.pretrained_cfg["label_names"][3]}


def test_drop_static_runs_model_1_joins_the_identity_and_the_cli_prints_the_real_time_factor(motion_video, tmp_path,
                                                                                            capsys):
    path, _ = motion_video
    torch.manual_seed(0)
    vivit.ViViT(variant="spacetime", img_size=32, num_frames=16, embed_dim=32, depth=1, num_heads=2, mlp_dim=64,
                num_classes=10).save_pretrained(tmp_path / "m1")
    common = ["timeline", path, "--model", tmp_path / "m1", "--out", tmp_path / "out", "--batch-size", "4",
              *TORCH_FLOAT32]
    rc, out, err = run_cli(capsys, *common, "--drop-static", "default", "--stop-after", "4")
    assert rc == 3, err
    assert json.loads((tmp_path / "out" / "run.json").read_text())["drop_static"] == pytest.approx(0.045)
    rc, _, err = run_cli(capsys, *common)  # dense windows are not mixed into a skipping run
    assert rc == 2 and "other settings" in err and "drop_static" in err  # bad usage, before loading
    rc, out, err = run_cli(capsys, *common, "--drop-static", "default")
    assert rc == 0, err
    assert re.search(r"^real-time factor \d+\.\d\d \(", out, re.M), out


def test_drop_static_on_model_2_is_one_line(motion_video, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "timeline", motion_video[0], "--model", "vivit_motion", "--out", tmp_path,
                         "--drop-static", "0.1", *TORCH_FLOAT32)
    assert rc == 2 and "drop_static needs Model 1" in err and "Traceback" not in err  # from the zoo's data
