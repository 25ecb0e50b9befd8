"""vivit.data.video on real files written with PyAV: codecs, seeking, rotation, VFR, bad input, frame indices, views."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.videos import CODECS, frame_ids, write_audio_only, write_truncated, write_video
from vivit import video
from vivit.data.transforms import eval_transform

av = pytest.importorskip("av", reason="PyAV is needed to write and read the test videos")


def _torchcodec_works() -> bool:
    try:
        video._import_torchcodec()
    except ImportError:
        return False
    return True


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI promises torchcodec (.ci/run installs FFmpeg)")
def test_ci_tests_the_torchcodec_decoder_too():
    assert _torchcodec_works(), ("torchcodec or FFmpeg's shared libraries are missing in CI, so its tests skipped: "
                                 ".ci/run installs ffmpeg with apt-get and torchcodec from the test extra")


# Writing a display matrix needs a recent PyAV; reading one does not.
CAN_ROTATE = hasattr(av.video.stream.VideoStream, "set_display_rotation")
needs_rotation_writer = pytest.mark.skipif(not CAN_ROTATE, reason="this PyAV cannot write rotation metadata")
BACKENDS = ["pyav", pytest.param("torchcodec", marks=pytest.mark.skipif(
    not _torchcodec_works(), reason="torchcodec (with FFmpeg libraries) not installed"))]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small file per case, written once for the module."""
    d = tmp_path_factory.mktemp("videos")
    out = {name: write_video(d / f"{name}{suffix}", 24, 48, 64, codec=name)
           for name, (suffix, *_) in CODECS.items()}
    out["odd_mjpeg"] = write_video(d / "odd.mkv", 10, 17, 33, codec="mjpeg_mkv")
    out["odd_gif"] = write_video(d / "odd.gif", 9, 21, 35, codec="gif")
    out["h264_50x38"] = write_video(d / "even_odd_blocks.mp4", 12, 38, 50)
    out["long_h264"] = write_video(d / "long.mp4", 100, 48, 64)
    out["long_vp9"] = write_video(d / "long.webm", 100, 48, 64, codec="vp9_webm")
    if CAN_ROTATE:
        for degrees in (90, 180, 270):
            out[f"rot{degrees}"] = write_video(d / f"rot{degrees}.mp4", 6, 48, 64, rotation=degrees)
    vfr_pts = [0, 40, 80, 200, 210, 220, 500, 540, 900, 1000, 1010, 1020]
    out["vfr_mp4"] = write_video(d / "vfr.mp4", len(vfr_pts), pts=vfr_pts, time_base=Fraction(1, 1000))
    out["vfr_mkv"] = write_video(d / "vfr.mkv", len(vfr_pts), codec="vp9_webm", pts=vfr_pts,
                                 time_base=Fraction(1, 1000))
    out["single_gif"] = write_video(d / "single.gif", 1, 20, 30, codec="gif")
    out["audio_only"] = write_audio_only(d / "audio.wav")
    out["truncated_mp4"] = write_truncated(d / "truncated.mp4", out["long_h264"])
    out["truncated_webm"] = write_truncated(d / "truncated.webm", out["long_vp9"])
    out["zero_length"] = d / "empty.mp4"
    out["zero_length"].write_bytes(b"")
    out["not_video"] = d / "notes.mp4"
    out["not_video"].write_text("these are notes, not a video\n" * 40)
    out["missing"] = d / "missing.mp4"
    return out


def test_import_vivit_loads_no_decoder():
    code = ("import sys, vivit, vivit.data.video, vivit.data.transforms, vivit.tasks.predict; "
            "print(sorted({'av', 'torchcodec'} & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [*CODECS, "odd_mjpeg", "odd_gif", "h264_50x38"])
def test_every_codec_decodes_all_frames_in_order(files, name, backend):
    frames = video.read_video(files[name], backend=backend)
    info = video.video_info(files[name], backend=backend)
    assert frames.dtype == torch.uint8 and frames.shape == (info.num_frames, info.height, info.width, 3)
    assert frame_ids(frames.numpy()) == list(range(info.num_frames))
    assert info.rotation == 0 and info.fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(info.num_frames / 25.0)


def test_odd_sizes_keep_their_size(files):
    assert video.read_video(files["odd_mjpeg"]).shape == (10, 17, 33, 3)
    assert video.read_video(files["odd_gif"]).shape == (9, 21, 35, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["long_h264", "long_vp9", "mpeg4_avi", "gif", "vfr_mp4"])
def test_frames_read_by_index_equal_the_same_frames_of_a_full_decode(files, name, backend):
    full = video.read_video(files[name], backend=backend)
    n = full.shape[0]
    rng = np.random.default_rng(0)
    cases = [[n - 1], [0], [n - 3, n - 2, n - 1], [5, 2, 5, 0], list(range(n // 2, n, 2)),
             rng.integers(0, n, 12).tolist(), sorted(rng.choice(n, 7, replace=False).tolist())]
    for indices in cases:
        part = video.read_video(files[name], indices, backend=backend)
        assert torch.equal(part, full[indices]), indices


def test_a_clip_near_the_end_does_not_decode_the_whole_file(files, monkeypatch):
    decoded = []
    original = video._PyAVReader._decode

    def counting(self, container, stream):
        for frame in original(self, container, stream):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(video._PyAVReader, "_decode", counting)
    clip = video.read_video(files["long_h264"], list(range(90, 100)))  # keyframes every 8 frames
    assert frame_ids(clip.numpy()) == list(range(90, 100))
    assert len(decoded) < 25, f"decoded {len(decoded)} frames for a 10-frame clip at the end of 100"


def test_tensor_indices_are_accepted(files):
    idx = torch.tensor([[1, 3], [5, 7]])
    assert frame_ids(video.read_video(files["h264_mp4"], idx).numpy()) == [1, 3, 5, 7]
    assert frame_ids(video.read_video(files["h264_mp4"], np.array([2, 4], dtype=np.uint8)).numpy()) == [2, 4]


@pytest.mark.parametrize("indices", [[1.5, 2.0], np.array([1.0, 3.0]), [1, 2.7], [True, False], np.array([True]),
                                     torch.tensor([1.0]), torch.tensor([True])])
def test_float_and_bool_indices_are_refused_not_truncated(files, indices):
    with pytest.raises(ValueError, match="indices must be integers"):
        video.read_video(files["h264_mp4"], indices)


def test_empty_indices_are_refused(files):
    with pytest.raises(ValueError, match="indices is empty"):
        video.read_video(files["h264_mp4"], [])


@needs_rotation_writer
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_metadata_is_applied_so_frames_are_upright(files, degrees, backend):
    path = files[f"rot{degrees}"]
    with av.open(str(path)) as container:  # what the file stores, before its display matrix is applied
        raw = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    info = video.video_info(path, backend=backend)
    frames = video.read_video(path, backend=backend).numpy()
    assert info.rotation == degrees
    assert (info.height, info.width) == ((64, 48) if degrees % 180 else (48, 64)) == frames.shape[1:3]
    np.testing.assert_array_equal(frames, np.rot90(raw, k=degrees // 90, axes=(1, 2)))
    # the stored top-left marker ends where a counter-clockwise turn puts it
    h, w = frames.shape[1:3]
    corner = {90: (slice(h - 4, h), slice(0, 4)), 180: (slice(h - 4, h), slice(w - 4, w)),
              270: (slice(0, 4), slice(w - 4, w))}[degrees]
    assert frames[0][corner].mean() > 200


@needs_rotation_writer
def test_partial_reads_are_rotated_too(files):
    full = video.read_video(files["rot90"])
    assert torch.equal(video.read_video(files["rot90"], [4, 1]), full[[4, 1]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["vfr_mp4", "vfr_mkv"])
def test_variable_frame_rate_indexes_decoded_frames_in_order(files, name, backend):
    info = video.video_info(files[name], backend=backend)
    assert info.num_frames == 12
    # 1.02 s between the first and last timestamps plus the last frame's 40 ms
    assert info.duration == pytest.approx(1.06, abs=0.011)
    assert info.fps == pytest.approx(12 / info.duration)
    assert frame_ids(video.read_video(files[name], [11, 3, 6, 0], backend=backend).numpy()) == [11, 3, 6, 0]


# ------------------------------------------------------------------------------------------------ bad input
BAD_INPUT = [
    ("missing", FileNotFoundError, "no such file"),
    ("not_video", video.VideoReadError, "cannot read it as a video"),
    ("zero_length", video.VideoReadError, r"is empty \(0 bytes\)"),
    ("truncated_mp4", video.VideoReadError, "truncated"),
    ("truncated_webm", video.VideoReadError, "is truncated: the header says 4.00 s"),
    ("audio_only", video.VideoReadError, r"no video stream \(found audio streams"),
]


@pytest.mark.parametrize(("name", "error", "message"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
@pytest.mark.parametrize("call", ["video_info", "read_video", "multi_view_clips"])
def test_bad_input_raises_one_clear_error_naming_the_file(files, name, error, message, call):
    fn = {"video_info": video.video_info, "read_video": video.read_video,
          "multi_view_clips": lambda p: video.multi_view_clips(p, {"input_size": (3, 4, 32, 32)})}[call]
    with pytest.raises(error, match=message) as info:
        fn(files[name])
    text = str(info.value)
    assert text.startswith(str(files[name])) and "\n" not in text


@pytest.mark.skipif(not _torchcodec_works(), reason="torchcodec (with FFmpeg libraries) not installed")
@pytest.mark.parametrize("name", ["not_video", "zero_length", "truncated_mp4", "audio_only", "missing"])
def test_bad_input_with_torchcodec_raises_the_same_classes(files, name):
    error = FileNotFoundError if name == "missing" else video.VideoReadError
    with pytest.raises(error, match=str(files[name])):
        video.video_info(files[name], backend="torchcodec")


def test_a_folder_is_not_a_video(tmp_path):
    with pytest.raises(video.VideoReadError, match="is a folder"):
        video.read_video(tmp_path)


def test_a_single_frame_gif_decodes_but_is_refused_as_a_clip(files):
    assert video.read_video(files["single_gif"]).shape == (1, 20, 30, 3)
    with pytest.raises(video.VideoReadError, match=r"single\.gif: has a single frame \(a still image"):
        video.multi_view_clips(files["single_gif"], {"input_size": (3, 4, 32, 32)})


def test_out_of_range_indices_name_the_valid_range(files):
    with pytest.raises(video.VideoReadError, match=r"frame index 24 is out of range; the video has 24 frames"):
        video.read_video(files["h264_mp4"], [0, 24])
    with pytest.raises(video.VideoReadError, match="frame index -1"):
        video.read_video(files["h264_mp4"], [-1])


def test_a_video_shorter_than_the_clip_loops_or_is_refused_on_request(files):
    cfg = {"input_size": (3, 16, 32, 32), "frame_stride": 2}  # a clip spans 32 frames, the video has 24
    clips = video.multi_view_clips(files["h264_mp4"], cfg, (2, 1))
    assert clips.shape == (2, 3, 16, 32, 32)
    with pytest.raises(video.VideoReadError, match=r"h264_mp4\.mp4: the video has 24 frames, shorter than one clip"):
        video.multi_view_clips(files["h264_mp4"], cfg, (2, 1), short_video="error")


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(short_video="pad"), "short_video must be one of"),
    (dict(model_or_cfg={"input_size": (3, 4, 32, 32), "frame_stride": 0}), "the cfg's frame_stride must be >= 1"),
])
def test_bad_clip_arguments_are_refused_before_the_video_is_opened(files, kwargs, message):
    kwargs = {"model_or_cfg": {"input_size": (3, 4, 32, 32)}, **kwargs}
    for path in (files["h264_mp4"], files["missing"]):  # a missing file is not even looked for
        with pytest.raises(ValueError, match=message) as info:
            video.multi_view_clips(path, **kwargs)
        assert not isinstance(info.value, video.VideoReadError), "a bad argument is not a bad video file"
        assert str(path) not in str(info.value)


def test_missing_decoder_says_how_to_install_it(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r'pip install av \(or pip install "vivit\[video\]"\)'):
        video.read_video(files["h264_mp4"], backend="pyav")


def test_unknown_backend_is_refused(files):
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        video.read_video(files["h264_mp4"], backend="opencv")


# ------------------------------------------------------------------------------------------------ indices
def _dmvr_indices(n: int, clip_len: int, stride: int, offset: int) -> list[int]:
    """dmvr sample_or_pad_sequence_indices(repeat_sequence=True), written as it is: tile, then gather."""
    repeats = int(np.ceil((clip_len * stride + offset) / n))
    tiled = np.tile(np.arange(n), repeats)
    return tiled[np.arange(offset, offset + clip_len * stride, stride)].tolist()


def test_one_test_clip_is_the_centre_clip():
    idx = video.clip_indices(250, 32, 2)
    assert idx.shape == (1, 32) and idx.dtype == torch.int64
    assert idx[0].tolist() == list(range(93, 157, 2))  # offset (250 - 64) // 2


@pytest.mark.parametrize(("n", "clips"), [(250, 4), (300, 4), (64, 4), (65, 3), (1000, 7), (101, 2)])
def test_test_clips_are_evenly_spaced_as_dmvr_linspace(n, clips):
    idx = video.clip_indices(n, 32, 2, clips)
    max_offset = max(0, n - 64)
    # tf.linspace in float32, then a truncating cast
    delta = np.float32(max_offset) / np.float32(clips - 1)
    offsets = [int(np.float32(i) * delta) for i in range(clips - 1)] + [max_offset]
    assert idx.shape == (clips, 32)
    assert idx.tolist() == [_dmvr_indices(n, 32, 2, o) for o in offsets]
    assert idx[0, 0] == 0 and idx[-1, 0] == max_offset


def test_kinetics_views_cover_a_ten_second_video():
    idx = video.clip_indices(250, 32, 2, 4)
    assert idx[:, 0].tolist() == [0, 62, 124, 186] and idx[-1, -1] == 248
    assert (idx.diff(dim=1) == 2).all()


@pytest.mark.parametrize("n", [1, 5, 20, 63])
def test_short_videos_loop_like_the_reference(n):
    idx = video.clip_indices(n, 32, 2, 4)
    assert idx.shape == (4, 32) and (idx < n).all()
    assert idx.tolist() == [_dmvr_indices(n, 32, 2, 0)] * 4
    with pytest.raises(ValueError, match=f"the video has {n} frames, shorter than one clip"):
        video.clip_indices(n, 32, 2, 4, short_video="error")


def test_random_clips_start_where_dmvr_draws_offsets():
    g = torch.Generator().manual_seed(0)
    idx = video.clip_indices(100, 8, 4, 500, "random", generator=g)
    starts = idx[:, 0]
    assert starts.min() == 0 and starts.max() == 100 - 7 * 4 - 1
    assert (idx.diff(dim=1) == 4).all()
    again = video.clip_indices(100, 8, 4, 500, "random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_clip_indices_rejects_bad_arguments():
    with pytest.raises(ValueError, match="has no clip to sample"):
        video.clip_indices(0)
    with pytest.raises(ValueError, match="mode must be one of"):
        video.clip_indices(10, mode="dense")
    with pytest.raises(ValueError, match="must be >= 1"):
        video.clip_indices(10, clip_len=0)


@pytest.mark.parametrize(("views", "expected"), [("4x3", (4, 3)), ("2X1", (2, 1)), ((4, 3), (4, 3)), (5, (5, 1))])
def test_views_parse(views, expected):
    assert video.parse_views(views) == expected


@pytest.mark.parametrize("views", ["4x2", "x3", "0x1", (1, 2, 3)])
def test_bad_views_are_refused(views):
    with pytest.raises(ValueError, match="views must be"):
        video.parse_views(views)


def test_thousands_of_clips_are_refused_before_anything_is_allocated():
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(ValueError, match=r"2000x3 asks for 2000 clips per video, more than the 32"):
        video.parse_views("2000x3")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20 and video.parse_views((video.MAX_CLIPS, 3)) == (video.MAX_CLIPS, 3)


# ------------------------------------------------------------------------------------------------ multi-view
def test_multi_view_clips_are_the_eval_transform_of_the_sampled_clips(files):
    cfg = {"input_size": (3, 8, 32, 32), "frame_stride": 3, "crop_pct": 0.8}
    clips = video.multi_view_clips(files["long_h264"], cfg, "4x3")
    assert clips.shape == (12, 3, 8, 32, 32) and clips.dtype == torch.float32
    assert clips.min() >= -1 and clips.max() <= 1
    indices = video.clip_indices(100, 8, 3, 4)
    transform = eval_transform(cfg, num_crops=3)
    for c in range(4):
        expected = transform(video.read_video(files["long_h264"], indices[c]))
        assert torch.equal(clips[3 * c : 3 * c + 3], expected)


def test_one_crop_views_use_the_centre_crop(files):
    cfg = {"input_size": (3, 4, 32, 32)}
    clips = video.multi_view_clips(files["long_h264"], cfg, (2, 1))
    expected = eval_transform(cfg)(video.read_video(files["long_h264"], video.clip_indices(100, 4, 2, 2)[1]))
    assert clips.shape == (2, 3, 4, 32, 32) and torch.equal(clips[1], expected)


def test_write_video_round_trips_frames(tmp_path):
    from vivit.data.video import read_video, write_video

    frames = torch.zeros(6, 32, 48, 3, dtype=torch.uint8)
    for t in range(6):
        frames[t, :, : 8 * (t + 1)] = 200  # a bar that grows each frame
    path = write_video(tmp_path / "bar.mp4", frames, fps=8)
    decoded = read_video(path)
    assert decoded.shape == frames.shape
    assert (decoded.float() - frames.float()).abs().mean() < 6  # lossy, but the same picture
    assert not list(tmp_path.glob(".*part*"))
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", torch.zeros(2, 31, 32, 3, dtype=torch.uint8))


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    class Interrupting:
        """PyAV, but Ctrl-C arrives at the third frame, once the partial file is on disk."""

        def __init__(self) -> None:
            self.calls = 0
            self.VideoFrame = self

        def __getattr__(self, name):
            return getattr(av, name)

        def from_ndarray(self, array, format):
            self.calls += 1
            if self.calls == 3:
                assert list(tmp_path.iterdir()), "the interruption must come after the file was created"
                raise KeyboardInterrupt
            return av.VideoFrame.from_ndarray(array, format=format)

    monkeypatch.setattr(video, "_import_av", Interrupting)
    with pytest.raises(KeyboardInterrupt):  # mpeg4 muxes each frame at once (libx264 buffers its first frames)
        video.write_video(tmp_path / "clip.avi", torch.zeros(6, 32, 48, 3, dtype=torch.uint8), codec="mpeg4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("codec", "size", "message"), [
    ("no_such_codec", 32, "'no_such_codec' is not an encoder"),
    ("aac", 32, "'aac' encodes audio, not video"),
    ("png", 32, "'png' cannot encode yuv420p"),
    ("h264", 31, r"'h264' \(libx264, 4:2:0\) needs even frame sizes"),  # the alias, not only "libx264"
])
def test_write_video_names_a_codec_it_cannot_use(tmp_path, codec, size, message):
    with pytest.raises(ValueError, match=message):
        video.write_video(tmp_path / "clip.mkv", torch.zeros(2, size, 32, 3, dtype=torch.uint8), codec=codec)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ resize while decoding
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "short_side", "interpolation"), [
    ("long_h264", 40, "bilinear"), ("odd_gif", 32, "bicubic"), ("h264_50x38", 224, "bilinear"),
    ("long_vp9", 20, "nearest"), pytest.param("rot90", 40, "bilinear", marks=needs_rotation_writer)])
def test_frames_resized_while_decoding_are_the_pixels_of_resizing_full_frames(files, name, short_side, interpolation,
                                                                               backend):
    from vivit.data.transforms import resize_short_side

    indices = [5, 0, 5, 3]
    full = video.read_video(files[name], indices, backend=backend)
    small = video.read_video(files[name], indices, backend=backend, short_side=short_side, interpolation=interpolation)
    expected = resize_short_side(full.permute(0, 3, 1, 2), short_side, interpolation).permute(0, 2, 3, 1)
    assert min(small.shape[1:3]) == short_side and torch.equal(small, expected)


def test_frames_beyond_the_exact_limit_are_scaled_by_ffmpeg_to_the_same_size(files, monkeypatch):
    path = files["rot90"] if CAN_ROTATE else files["long_h264"]
    exact = video.read_video(path, [0, 3], short_side=24)
    monkeypatch.setattr(video, "EXACT_RESIZE_MAX_PIXELS", 100)  # every test frame is now "huge"
    scaled = video.read_video(path, [0, 3], short_side=24)
    assert scaled.shape == exact.shape and min(exact.shape[1:3]) == 24
    assert (scaled.float() - exact.float()).abs().mean() < 12  # area-filtered, not unfiltered: close, not equal
    clips = video.multi_view_clips(path, {"input_size": (3, 4, 24, 24), "crop_pct": 1.0}, (1, 1))
    assert clips.shape == (1, 3, 4, 24, 24)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"short_side": 0}, "short_side must be a positive integer"), ({"short_side": 2.5}, "short_side must be"),
    ({"short_side": True}, "short_side must be"), ({"short_side": 8, "interpolation": "area"}, "interpolation must")])
def test_bad_resize_arguments_are_refused_before_decoding(files, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        video.read_video(files["h264_mp4"], [0], **kwargs)
    assert not isinstance(info.value, video.VideoReadError)


def test_an_mkv_whose_frames_share_a_millisecond_is_not_called_truncated(tmp_path):
    # Matroska stores milliseconds: a frame 0.3 ms after the previous one gets the same timestamp. The stream is
    # variable-rate (100 fps, then 5 fps), so the nominal rate says nothing about the duration the header states.
    av = pytest.importorskip("av")
    path = tmp_path / "repeated.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 10000)
        t = 0
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 6, np.uint8), format="rgb24")
            t += 3 if i == 20 else (100 if i < 20 else 2000)
            frame.pts, frame.time_base = t, Fraction(1, 10000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:  # the file has what the test is about: a repeated timestamp
        stamps = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
    assert len(set(stamps)) < len(stamps) == 40
    info = video.video_info(path)
    assert info.num_frames == 40 and info.duration == pytest.approx(4.03, abs=0.02)
    frames = video.read_video(path)
    assert frames.shape == (40, 32, 32, 3)
    np.testing.assert_allclose(frames[:, 16, 16].float().mean(1), np.arange(40) * 6, atol=8)
