"""``vivit timeline`` under hostile input: the output folder as shared state, streams that stall, outputs that are
not finite, garbage on resume, and the video opened once."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

import vivit  # noqa: E402
from tests.tasks.test_timeline import FPS, TORCH_FLOAT32, run_cli  # noqa: E402
from vivit.data.stream import VideoStream  # noqa: E402
from vivit.data.synthetic import make_sequence  # noqa: E402
from vivit.data.video import VideoReadError, write_video  # noqa: E402
from vivit.tasks import timeline as tl  # noqa: E402
from vivit.tasks.run import RunError, _lock  # noqa: E402
from vivit.tasks.timeline import NotFinite, timeline_video  # noqa: E402


def _frames(labels: list[int], seed: int, each: int = 16) -> np.ndarray:
    frames = make_sequence(labels, np.random.default_rng(seed), frames_each=each, size=32)
    return frames.repeat(2, axis=1).repeat(2, axis=2)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Two short MP4s of different content and one Matroska file (streamable)."""
    root = tmp_path_factory.mktemp("videos")
    return {"a": write_video(root / "a.mp4", _frames([0, 2, 8], 1), fps=FPS),
            "b": write_video(root / "b.mp4", _frames([3, 9], 2), fps=FPS),
            "mkv": write_video(root / "c.mkv", _frames([1, 4, 6, 7], 3), fps=FPS)}


@pytest.fixture(scope="module")
def model():
    return vivit.create_model("vivit_motion", pretrained=True).eval()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ------------------------------------------------------------------------------------------- the output folder
def test_a_live_run_deletes_nothing_before_it_holds_the_lock(videos, model, tmp_path):
    out = tmp_path / "out"
    timeline_video(videos["a"], model, out, step=0.5, plot=False)
    before = {n: (out / n).read_bytes() for n in ("windows.jsonl", "run.json", "segments.json")}
    lock = _lock(out)  # another process writing the folder
    try:
        with pytest.raises(RunError, match="another vivit process"):
            timeline_video(videos["mkv"], model, out, follow=0.5, plot=False)
    finally:
        lock.close()
    assert {n: (out / n).read_bytes() for n in before} == before


def test_a_followed_file_does_not_replace_another_videos_run(videos, model, tmp_path):
    out = tmp_path / "out"
    timeline_video(videos["a"], model, out, step=0.5, plot=False)
    windows = (out / "windows.jsonl").read_bytes()
    with pytest.raises(ValueError, match="other settings.*video"):
        timeline_video(videos["mkv"], model, out, follow=0.5, plot=False)
    assert (out / "windows.jsonl").read_bytes() == windows
    def live_windows() -> list[dict]:  # "delay" is wall-clock time behind the live edge: it differs between runs
        return [{k: v for k, v in json.loads(line).items() if k != "delay"}
                for line in _lines(tmp_path / "live" / "windows.jsonl")]

    first = timeline_video(videos["mkv"], model, tmp_path / "live", follow=0.5, plot=False)
    windows = live_windows()
    again = timeline_video(videos["mkv"], model, tmp_path / "live", follow=0.5, plot=False)  # its own run: afresh
    assert again["windows"] == first["windows"] and live_windows() == windows


def test_outputs_without_run_json_are_refused(videos, model, tmp_path):
    timeline_video(videos["a"], model, tmp_path / "first", step=0.5, plot=False)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "windows.jsonl").write_text("\n".join(_lines(tmp_path / "first" / "windows.jsonl")[:8]) + "\n")
    with pytest.raises(ValueError, match="without run.json"):
        timeline_video(videos["b"], model, planted, step=0.5, plot=False)
    assert len(_lines(planted / "windows.jsonl")) == 8 and not (planted / "run.json").exists()


def test_the_identity_holds_token_merging_and_the_model_config(videos, tmp_path):
    merged = vivit.create_model("vivit_motion", pretrained=True, token_merging=6).eval()
    timeline_video(videos["a"], merged, tmp_path, step=0.5, batch_size=2, stop_after=2, plot=False)
    plain = vivit.create_model("vivit_motion", pretrained=True).eval()
    with pytest.raises(ValueError, match="token_merging was 6, now 0"):
        timeline_video(videos["a"], plain, tmp_path, step=0.5, batch_size=2, plot=False)
    pooled = vivit.create_model("vivit_motion", pretrained=True, token_merging=6, global_pool="max").eval()
    with pytest.raises(ValueError, match="model's config differ"):
        timeline_video(videos["a"], pooled, tmp_path, step=0.5, batch_size=2, plot=False)


def test_a_finished_run_again_computes_nothing(videos, model, tmp_path):
    first = timeline_video(videos["a"], model, tmp_path, step=0.5, batch_size=4, plot=False)
    assert first["windows"] % 4  # a last partial batch
    segments = (tmp_path / "segments.json").read_text()
    seen: list[dict] = []
    again = timeline_video(videos["a"], model, tmp_path, step=0.5, batch_size=4, plot=False, on_window=seen.append)
    assert seen == [] and again["windows"] == first["windows"]
    assert (tmp_path / "segments.json").read_text() == segments
    resegmented = timeline_video(videos["a"], model, tmp_path, step=0.5, batch_size=4, plot=False, min_segment=10)
    assert seen == [] and resegmented["segments"] == 1  # other segmenting settings need no new windows


def test_two_runs_into_one_out_never_mix(videos, model, tmp_path):
    timeline_video(videos["a"], model, tmp_path, step=0.5, batch_size=2, stop_after=2, plot=False)
    with pytest.raises(ValueError, match="other settings"):
        timeline_video(videos["b"], model, tmp_path, step=0.5, batch_size=2, plot=False)


# ------------------------------------------------------------------------------------------- garbage on resume
@pytest.mark.parametrize("garbage", ['{"index": 3}', "[1, 2]", '"text"', '{"index": 1e400, "start": 0, "end": 1}',
                                     '{"index": 99999999999999999999999, "start": 0, "end": 1, "top": []}',
                                     '{"index": 0, "start": 0.0, "end": 2.0, "top": [{"label": "a", "score": 1}]}',
                                     "\x00\x01 not json", '{"index": 9, "start": NaN, "end": 1, "top": []}',
                                     # the next index, but a score no softmax gives, a label of two lines, a padded
                                     # that is no bool: each was resumed and reached segments.json
                                     '{"index": 2, "start": 1, "end": 3, "top": [{"label": "blinking", "score": 2.5}]}',
                                     '{"index": 2, "start": 1, "end": 3, "top": [{"label": "blinking", "score": -1}]}',
                                     '{"index": 2, "start": 1, "end": 3, "top": [{"label": "a\\nb", "score": 0.5}]}',
                                     '{"index": 2, "start": 1, "end": 3, "top": [{"label": "a", "score": 0.5}], '
                                     '"padded": "yes"}'])
def test_garbage_in_windows_jsonl_is_one_line(videos, tmp_path, capsys, garbage):
    common = ["timeline", videos["a"], "--model", "vivit_motion", "--out", tmp_path, "--step", "0.5",
              "--batch-size", "2", *TORCH_FLOAT32]
    assert run_cli(capsys, *common, "--stop-after", "2")[0] == 3
    with open(tmp_path / "windows.jsonl", "a") as f:
        f.write(garbage + "\n")
    rc, _, err = run_cli(capsys, *common)
    errors = [line for line in err.strip().splitlines() if not line.startswith("vivit timeline: backend ")]
    assert rc == 1 and len(errors) == 1 and "windows.jsonl: line 3" in err, err


# ------------------------------------------------------------------------------------------- not finite
def test_non_finite_scores_fail_the_video_and_the_files_stay_json(videos, model, tmp_path, capsys):
    def nan(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], model.num_classes), float("nan"))

    with pytest.raises(NotFinite, match="not finite"):
        next(vivit.timeline(model, videos["a"], run=nan))
    huge = copy.deepcopy(model)
    with torch.no_grad():
        huge.head.weight[:2] = 3e38  # two rows overflow: +-inf logits, NaN scores
    result = timeline_video(videos["a"], huge, tmp_path, step=0.5, plot=False)
    assert "not finite" in result["error"] and result["windows"] == 0

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a JSON output"))

    assert [strict(line) for line in _lines(tmp_path / "windows.jsonl")] == []
    assert strict((tmp_path / "segments.json").read_text()) == []


# ------------------------------------------------------------------------------------------- streams
class _Server:
    """A loopback HTTP server that sends ``data`` (headers first) and then holds the connection silently (or closes
    it: ``hold=False``); with ``data=None`` it accepts and never answers."""

    def __init__(self, data: bytes | None, hold: bool = True) -> None:
        self.hold = hold
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.data, self.requests, self.conns = data, 0, []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/live.mkv"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.requests += 1
            self.conns.append(conn)
            if self.data is not None:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/x-matroska\r\n\r\n" + self.data)
                if not self.hold:
                    conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def serve():
    servers: list[_Server] = []

    def start(data: bytes | None, hold: bool = True) -> _Server:
        servers.append(_Server(data, hold))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_silent_url_ends_at_the_read_deadline(model, tmp_path, serve, monkeypatch):
    monkeypatch.setenv("VIVIT_DOWNLOAD_TIMEOUT", "0.5")
    server = serve(None)
    with pytest.raises(TimeoutError, match="sent nothing for 0.5 s.*VIVIT_DOWNLOAD_TIMEOUT"):
        timeline_video(server.url, model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_url_that_stalls_midway_keeps_the_windows_before_it(videos, model, tmp_path, serve, monkeypatch, capsys):
    monkeypatch.setenv("VIVIT_DOWNLOAD_TIMEOUT", "0.5")
    data = videos["mkv"].read_bytes()
    server = serve(data[: len(data) * 2 // 3])  # two thirds, then silence
    rc, _, err = run_cli(capsys, "timeline", server.url, "--model", "vivit_motion", "--out", tmp_path, "--step", "0.5",
                         *TORCH_FLOAT32)
    assert rc == 1 and "sent nothing for 0.5 s" in err and "windows before it are kept" in err
    kept = [json.loads(line) for line in _lines(tmp_path / "windows.jsonl")]
    whole = list(vivit.timeline(model, videos["mkv"], step=0.5))
    assert 0 < len(kept) < len(whole) and [w["index"] for w in kept] == [w["index"] for w in whole[:len(kept)]]
    assert json.loads((tmp_path / "segments.json").read_text())


def _interrupt_once_stalled(lines: Path) -> None:
    """Send this process SIGINT once ``lines`` has had windows and then no new one for a second (or after 60 s)."""
    def interrupt() -> None:
        for _ in range(600):
            time.sleep(0.1)
            if lines.exists() and lines.stat().st_size and time.time() - lines.stat().st_mtime > 1.0:
                break
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()


def test_ctrl_c_on_a_stalled_url_exits_130_and_keeps_the_windows(videos, tmp_path, serve, monkeypatch, capsys):
    monkeypatch.setenv("VIVIT_DOWNLOAD_TIMEOUT", "600")  # the deadline is far away: only Ctrl-C ends the wait
    data = videos["mkv"].read_bytes()
    server = serve(data[: len(data) * 2 // 3])
    lines = tmp_path / "windows.jsonl"

    _interrupt_once_stalled(lines)  # windows come, then the input stalls: Ctrl-C while it waits
    started = time.monotonic()
    rc, _, _ = run_cli(capsys, "timeline", server.url, "--model", "vivit_motion", "--out", tmp_path, "--step", "0.5",
                       "--batch-size", "1", *TORCH_FLOAT32)
    assert rc == 130 and time.monotonic() - started < 300  # far below the 600 s deadline
    kept = [json.loads(line) for line in _lines(lines)]
    segs = json.loads((tmp_path / "segments.json").read_text())
    assert kept and segs and segs[-1]["end"] == kept[-1]["end"]


def test_ctrl_c_while_following_a_file_that_stopped_growing(videos, model, tmp_path):
    data = videos["mkv"].read_bytes()
    growing = tmp_path / "recording.mkv"
    growing.write_bytes(data[: len(data) * 2 // 3])  # the recorder stopped; --follow waits up to 600 s for more
    lines = tmp_path / "out" / "windows.jsonl"

    _interrupt_once_stalled(lines)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):  # PyAV used to drop it inside the file's read: the wait went on
        timeline_video(growing, model, tmp_path / "out", follow=600, step=0.5, batch_size=1, plot=False)
    assert time.monotonic() - started < 300
    kept = [json.loads(line) for line in _lines(lines)]
    assert kept and json.loads((tmp_path / "out" / "segments.json").read_text())[-1]["end"] == kept[-1]["end"]


def test_a_url_is_connected_to_once_and_windows_are_planned_once(videos, model, tmp_path, serve, monkeypatch):
    plans, original = [], tl.window_plan
    monkeypatch.setattr(tl, "window_plan", lambda *a, **k: plans.append(1) or original(*a, **k))
    server = serve(videos["mkv"].read_bytes(), hold=False)
    result = timeline_video(server.url, model, tmp_path, step=0.5, plot=False)
    assert result["windows"] > 0 and server.requests == 1 and len(plans) == 1


def test_a_file_is_opened_once_for_header_windows_and_thumbnails(videos, model, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    opened = []
    original = VideoStream.__init__

    def counting(self, *args, **kwargs):
        opened.append(args[0])
        original(self, *args, **kwargs)

    monkeypatch.setattr(VideoStream, "__init__", counting)
    timeline_video(videos["a"], model, tmp_path, step=0.5)
    assert len(opened) == 1 and (tmp_path / "timeline.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------- odd videos and models
def test_a_headless_model_is_refused(videos, tmp_path):
    headless = vivit.create_model("vivit_motion", pretrained=True, num_classes=0).eval()
    with pytest.raises(ValueError, match="no classifier head"):
        timeline_video(videos["a"], headless, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_follow_on_an_mp4_says_why_it_cannot_be_followed(videos, model, tmp_path):
    with pytest.raises(VideoReadError, match="MP4/MOV.*Matroska"):
        timeline_video(videos["a"], model, tmp_path / "out", follow=1)


def test_a_frame_rate_of_one_per_thousand_seconds_is_one_clear_error(tmp_path, model):
    from fractions import Fraction

    from tests.videos import write_video as write_pattern

    path = write_pattern(tmp_path / "slow.mkv", num_frames=20, codec="mjpeg_mkv", fps=Fraction(1, 1000),
                         time_base=Fraction(1, 1000))
    with pytest.raises(VideoReadError, match="frame rate reads 0.001 fps"):
        next(vivit.timeline(model, path))


# ------------------------------------------------------------------------------------------- the picture
def _windows_over(seconds: float, step: float = 1.0) -> tuple[list[dict], list[dict]]:
    windows = [{"index": i, "start": i * step, "end": i * step + 2, "top": [{"label": "ab"[(i // 37) % 2],
                                                                            "score": 0.9}]}
               for i in range(int(seconds / step))]
    return windows, tl.segments(windows)


def test_the_picture_grows_with_the_video_and_spreads_its_thumbnails(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    short, long = _windows_over(50), _windows_over(600)
    tl.plot_timeline(*short, tmp_path / "short.png")
    tl.plot_timeline(*long, tmp_path / "long.png")
    assert imread(tmp_path / "long.png").shape[0] > 3 * imread(tmp_path / "short.png").shape[0]
    rows = tl._rows(long[0], long[0][-1]["end"])
    times = [t for lo, hi in rows for t in tl._thumbnail_times(long[1], lo, hi)]
    assert max(times) > 0.9 * 600 - 60 and len(rows) > 1  # the last thumbnails near the end, not all in 10 s


# ------------------------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("option", [("--step", "inf"), ("--step", "1e308"), ("--step", "nan"), ("--step", "-1"),
                                    ("--follow", "nan"), ("--window-stride", "9" * 20), ("--batch-size", "100000"),
                                    ("--min-segment", "nan"), ("--min-segment", "-1"), ("--min-segment", "inf")])
def test_options_at_their_extremes_are_bad_usage(tmp_path, capsys, option):
    from vivit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["timeline", str(tmp_path / "v.mp4"), "--out", str(tmp_path / "out"), *option])
    assert exit_.value.code == 2 and f"argument {option[0]}" in capsys.readouterr().err


def test_the_cli_bounds_are_the_librarys():
    from vivit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["timeline"]
    bounds = {a.dest: a.type for a in sub._actions}
    with pytest.raises(Exception, match=f"from 1 to {tl.MAX_BATCH_SIZE}"):
        bounds["batch_size"](str(tl.MAX_BATCH_SIZE + 1))
    with pytest.raises(Exception, match=f"from 1 to {tl.MAX_WINDOW_STRIDE}"):
        bounds["window_stride"](str(tl.MAX_WINDOW_STRIDE + 1))
    assert bounds["batch_size"](str(tl.MAX_BATCH_SIZE)) == tl.MAX_BATCH_SIZE
    assert bounds["step"](str(tl.MAX_STEP)) == tl.MAX_STEP


def test_timeline_help_describes_the_command_and_its_exit_statuses(capsys):
    from vivit.cli import main

    with pytest.raises(SystemExit):
        main(["timeline", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "windows.jsonl" in text and "exit status: 0 ok" in text and "130 interrupted" in text
    assert "whole batches" in text


def test_timestamps_that_go_back_never_make_a_window_end_before_it_starts():
    from types import SimpleNamespace

    from vivit.data.stream import sliding_windows

    times = [0, .1, .2, .3, .4, .5, .6, .7, .1, .2, .3, .4, .5, .6, .7, .8, .9, 1.0, 1.1, 1.2]  # a restart at 0.8 s

    class Stream:  # what sliding_windows reads of a VideoStream (muxers refuse to write such files)
        info, source = SimpleNamespace(fps=10.0), "restarted.ts"

        def frames(self, start: float = 0.0):
            return ((t, None) for t in times if t >= start)

        def to_array(self, frame: object) -> np.ndarray:
            return np.zeros((2, 2, 3), np.uint8)

    windows = list(sliding_windows(Stream(), 4, 1, 0.5))
    assert [(w.index, w.start) for w in windows][:2] == [(0, 0), (1, 0.5)]
    assert all(w.end > w.start for w in windows) and len(windows) == 4  # 20 frames at 10 fps: 2 s, a window each 0.5
