"""The ``vivit`` command, run as a subprocess like a user would."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vivit
from vivit import cli

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vivit", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_list_prints_architectures_and_tags():
    out = run_cli("list", "vivit_b*")
    assert out.returncode == 0 and out.stdout.split() == vivit.list_models("vivit_b*")
    tags = run_cli("list", "--pretrained", "--json")
    rows = json.loads(tags.stdout)
    assert [r["architecture"] + "." + r["tag"] for r in rows] == vivit.list_models(pretrained=True)


def test_version_names_vivit_and_torch():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith(f"vivit {vivit.__version__} (torch {torch.__version__}")


def test_list_into_a_closed_pipe_exits_quietly():
    # `vivit list --json | head -0`: the reader is gone before the first write, so every write gets EPIPE.
    proc = subprocess.Popen([sys.executable, "-m", "vivit", "list", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 0 and stderr == ""


@pytest.mark.parametrize("extra", [[], ["--pretrained"]])
def test_list_pattern_matching_nothing_fails_with_close_names(extra):
    out = run_cli("list", "vivt*", *extra)
    assert out.returncode == 1 and out.stdout == ""
    assert "no model matches 'vivt*'" in out.stderr and "Closest: vivit_" in out.stderr
    assert "`vivit list`" in out.stderr and len(out.stderr.splitlines()) == 1


def test_unknown_model_on_the_command_line_points_to_vivit_list(tmp_path):
    out = run_cli("classify", tmp_path / "v.mp4", "--model", "vivit_b_16x2_fee", env=_offline_env(tmp_path))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "vivit_b_16x2_fe" in out.stderr and "`vivit list`" in out.stderr and "list_models()" not in out.stderr


def test_convert_reference_checkpoint_writes_a_hub_ready_folder(tmp_path, golden_dir):
    checkpoint = golden_dir / "scenic" / "checkpoints" / "vivit_spacetime_A_optax" / "checkpoint_1000"
    sidecar = golden_dir / "scenic" / "vivit_spacetime_A.json"
    out = run_cli("convert", checkpoint, tmp_path / "out", "--scenic-config", sidecar, "--img-size", "16")
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    model = vivit.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    arrays = np.load(golden_dir / "scenic" / "vivit_spacetime_A.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(arrays["input"]).permute(0, 4, 1, 2, 3)).numpy()
    np.testing.assert_allclose(logits, arrays["logits"], atol=1e-5, rtol=1e-5)


def test_convert_transformers_folder_and_resample_frames(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 16, 16], hidden_size=16,
                                      num_hidden_layers=1, num_attention_heads=4, intermediate_size=32, num_labels=3)
    transformers.VivitForVideoClassification(config).save_pretrained(tmp_path / "hf")
    out = run_cli("convert", tmp_path / "hf", tmp_path / "out", "--num-frames", "8")
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_args"]["num_frames"] == 8
    assert saved["model_args"]["act_layer"] == "gelu_tanh"  # VivitConfig's default hidden_act is gelu_fast


def test_convert_bare_weights_need_an_architecture(tmp_path):
    model = vivit.create_model("vivit_ti_16x2", depth=1, img_size=32, num_frames=4, num_classes=2)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    out = run_cli("convert", tmp_path / "w.pt", tmp_path / "out")
    assert out.returncode != 0 and "--arch" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("convert", tmp_path / "w.pt", tmp_path / "out", "--arch", "vivit_ti_16x2", "--num-classes", "2",
                  "--img-size", "32", "--num-frames", "4")
    assert out.returncode == 1 and "encoder.blocks.1" in out.stderr  # depth 12 expected, the file has 1 block


def test_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01junk" * 10)
    out = run_cli("convert", tmp_path / "junk.bin", tmp_path / "out", "--arch", "vivit_ti_16x2")
    assert out.returncode == 1 and "junk.bin" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------------------------------------ classify
def _offline_env(tmp_path) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VIVIT_"))}
    env.update(HF_HUB_OFFLINE="1", VIVIT_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), VIVIT_CACHE=str(tmp_path / "c"))
    return env


def test_classify_reports_every_video_and_fails_at_the_end(tmp_path):
    pytest.importorskip("av")
    from tests.videos import write_truncated, write_video

    model = vivit.ViViT(variant="factorized_encoder", img_size=32, num_frames=8, tubelet_size=(2, 16, 16),
                        embed_dim=16, depth=1, temporal_depth=1, num_heads=2, mlp_dim=32, num_classes=3)
    torch.nn.init.normal_(model.head.weight)
    model.save_pretrained(tmp_path / "model", label_names=["left", "right", "still"])
    good = write_video(tmp_path / "good.mp4", num_frames=20, height=40, width=56)
    other = write_video(tmp_path / "other.avi", num_frames=12, height=36, width=36, codec="mpeg4_avi")
    truncated = write_truncated(tmp_path / "cut.mp4", good)
    out = run_cli("classify", good, tmp_path / "missing.mp4", truncated, other, "--model", tmp_path / "model",
                  "--views", "2x3", "--top-k", "2", "--json", "--dtype", "float32", env=_offline_env(tmp_path))
    assert out.returncode == 1, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [Path(r["video"]).name for r in rows] == ["good.mp4", "other.avi"]
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["label"] in {"left", "right", "still"} for r in rows)
    assert rows[0]["views"] == "2x3"
    assert "missing.mp4" in out.stderr and "cut.mp4" in out.stderr and "Traceback" not in out.stderr
    assert "2 of 4 videos failed" in out.stderr
    lines = out.stderr.splitlines()
    assert lines[0].endswith("2x3 views (6 clips of 3x8x32x32) per video")
    runtime = [line for line in lines if line.startswith("vivit classify: backend ")]  # what runs it, dtype, where
    assert len(runtime) == 1 and "float32" in runtime[0] and "on cpu" in runtime[0].lower()


def test_classify_offline_default_model_names_the_offline_option(tmp_path):
    pytest.importorskip("av")
    from tests.videos import write_video

    video = write_video(tmp_path / "v.mp4", num_frames=8)
    out = run_cli("classify", video, env=_offline_env(tmp_path))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "vivit_b_16x2.k400" in out.stderr and "--model vivit_motion" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_classify_help_says_how_long_it_takes():
    out = run_cli("classify", "--help")
    assert out.returncode == 0 and "per view" in out.stdout and "GPU" in out.stdout and "bfloat16" in out.stdout


def test_explain_writes_a_png_for_a_video(tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("matplotlib")
    from tests.videos import write_video

    model = vivit.ViViT(variant="factorized_self_attention", img_size=32, num_frames=8, tubelet_size=(2, 16, 16),
                        embed_dim=16, depth=1, num_heads=2, mlp_dim=32, num_classes=3)
    model.save_pretrained(tmp_path / "model")
    video = write_video(tmp_path / "clip.mp4", num_frames=20, height=40, width=56)
    out = run_cli("explain", video, "--model", tmp_path / "model", "--out", tmp_path / "maps",
                  env=_offline_env(tmp_path))
    assert out.returncode == 0, out.stderr
    png = tmp_path / "maps" / "clip_attention.png"
    assert out.stdout.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"


def test_demo_runs_offline_and_gets_the_clips_right(tmp_path):
    pytest.importorskip("av")
    out = run_cli("demo", "--out", tmp_path / "demo", "--num", "4", env=_offline_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "4/4 correct" in out.stdout and "vivit classify" in out.stdout
    videos = sorted((tmp_path / "demo").glob("*.mp4"))
    assert len(videos) == 4
    again = run_cli("classify", *videos, "--model", "vivit_motion", "--views", "1x1", "--json", "--top-k", "1",
                    env=_offline_env(tmp_path))
    assert again.returncode == 0, again.stderr
    for video, line in zip(videos, again.stdout.splitlines(), strict=True):
        assert json.loads(line)["top_k"][0]["label"] == video.stem.split("_", 1)[1]
    in_bf16 = run_cli("classify", *videos, "--model", "vivit_motion", "--json", "--top-k", "1",
                      "--dtype", "bfloat16", env=_offline_env(tmp_path))
    assert in_bf16.returncode == 0, in_bf16.stderr
    for video, line in zip(videos, in_bf16.stdout.splitlines(), strict=True):
        assert json.loads(line)["top_k"][0]["label"] == video.stem.split("_", 1)[1]
        assert json.loads(line)["views"] == "1x1"  # no --views: the model's eval_views
    assert "vivit_motion, 1x1 views (1 clip of 3x16x32x32) per video" in in_bf16.stderr
    # the runtime's line says the dtype that runs: bfloat16, or float32 where OpenVINO said why (no native bfloat16)
    (runtime,) = [line for line in in_bf16.stderr.splitlines() if line.startswith("vivit classify: backend ")]
    assert "bfloat16" in runtime or ("float32" in runtime and "no native bfloat16" in in_bf16.stderr)


def test_a_split_head_is_ranked_per_part_with_its_own_softmax():
    import torch

    from vivit.tasks.predict import top_k

    logits = torch.tensor([2.0, 0.0, 1.0, 5.0, 5.0])  # parts of 3 and 2 classes (as EPIC-Kitchens' nouns, verbs)
    labels = ["n0", "n1", "n2", "v0", "v1"]
    nouns, verbs = top_k(logits, 2, labels, class_splits=(3, 2))
    assert [t["label"] for t in nouns] == ["n0", "n2"] and [t["index"] for t in verbs] == [3, 4]
    assert nouns[0]["score"] == pytest.approx(float(torch.softmax(logits[:3], 0)[0]), abs=1e-6)
    assert [t["score"] for t in verbs] == [0.5, 0.5]
    (single,) = top_k(logits, 1, labels)
    assert single[0]["label"] in {"v0", "v1"}


@pytest.mark.parametrize("option", ["--top-k", "--batch-size"])
def test_classify_refuses_non_positive_counts_before_loading_anything(option, capsys):
    from vivit.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["classify", "clip.mp4", option, "0"])
    assert exit_info.value.code == 2 and "must be a positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- convert: trust the weights
def _convert(capsys, *args) -> tuple[int | str | None, str, str]:
    """``vivit convert`` in-process: (exit code or SystemExit message, stdout, stderr)."""
    from vivit.cli import main

    try:
        code = main(["convert", *map(str, args)])
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_convert_into_an_arch_takes_head_and_clip_size_from_the_weights_or_refuses(tmp_path, capsys):
    """A 5-class, 8-frame, 64-px checkpoint once became a fresh 400-class head and resampled 65 -> 3137 tokens."""
    model = vivit.create_model("vivit_ti_16x2", num_classes=5, num_frames=8, img_size=64)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    code, _, _ = _convert(capsys, tmp_path / "w.pt", tmp_path / "refused", "--arch", "vivit_ti_16x2")
    assert "do not fit vivit_ti_16x2's token grid" in str(code) and "--num-frames and --img-size" in str(code)
    assert not (tmp_path / "refused").exists()

    code, out, _ = _convert(capsys, tmp_path / "w.pt", tmp_path / "same", "--arch", "vivit_ti_16x2",
                            "--num-frames", "8", "--img-size", "64")
    saved = json.loads((tmp_path / "same" / "config.json").read_text())
    assert code == 0 and "resampled" not in out and "new classifier" not in out
    assert (saved["num_classes"], saved["model_args"]["num_frames"], saved["model_args"]["img_size"]) == (5, 8, 64)

    code, out, _ = _convert(capsys, tmp_path / "w.pt", tmp_path / "longer", "--arch", "vivit_ti_16x2",
                            "--num-frames", "16", "--img-size", "64", "--num-classes", "3")
    assert code == 0
    assert "resampled encoder.pos_embed from grid (4, 4, 4) to (8, 4, 4)" in out
    assert "new classifier: 5 classes in the weights, 3 in the model" in out

    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("head.")}, tmp_path / "headless.pt")
    code, _, _ = _convert(capsys, tmp_path / "headless.pt", tmp_path / "h", "--arch", "vivit_ti_16x2",
                          "--num-frames", "8", "--img-size", "64")
    assert "has no classifier head: pass --num-classes" in str(code)


@pytest.mark.parametrize("damage", ["nan", "4tib_npz", "read_only"])
def test_convert_hostile_inputs_are_one_line(tmp_path, capsys, damage):
    import zipfile

    from tests.weights.test_hub import read_only_folder
    from tests.weights.test_pretrained import _npy

    out_dir = tmp_path / "out"
    args = ["--arch", "vivit_ti_16x2", "--num-frames", "4", "--img-size", "32", "--num-classes", "5"]
    model = vivit.create_model("vivit_ti_16x2", num_classes=5, num_frames=4, img_size=32)
    source = tmp_path / "w.pt"
    if damage == "nan":
        with torch.no_grad():
            model.encoder.norm.weight[2] = float("nan")
        match = r"NaN or infinite values in 1 tensors: encoder.norm.weight \(1 of 192\)"
    elif damage == "4tib_npz":
        source = tmp_path / "params.npz"
        with zipfile.ZipFile(source, "w") as zf:
            zf.writestr("params/embedding/kernel.npy", _npy((1 << 40,)) + bytes(64))
        match = "4398046511104 bytes"
    else:
        out_dir = read_only_folder(tmp_path)
        match = f"cannot save the model to {out_dir}"
    torch.save(model.state_dict(), tmp_path / "w.pt")
    code, _, err = _convert(capsys, source, out_dir, *args)
    assert code == 1 and err.count("\n") == 1 and __import__("re").search(match, err), err
    assert damage == "read_only" or not out_dir.exists()


@pytest.mark.parametrize("command", [["classify", "clip.mp4"], ["explain", "clip.mp4"], ["convert", "src", "out"]])
def test_commands_that_download_take_force_download(command):
    from vivit.cli import build_parser

    assert build_parser().parse_args([*command, "--force-download"]).force_download is True
    assert build_parser().parse_args(command).force_download is False


# ------------------------------------------------------------------------------------------------ hostile input
def _failures(stderr: str) -> list[str]:
    """stderr's lines without the plan line ``classify`` prints first (model, views, clip size, device)."""
    starts = ("vivit classify: vivit_motion, ", "vivit classify: backend ", "vivit classify: --dtype auto",
              "vivit.optimize: ")
    return [line for line in stderr.splitlines() if not line.startswith(starts)]


def _peak_rss_mb(*commands: list[str], env: dict) -> list[float]:
    """Peak RSS of each command, run one after the other in a fresh process that has no other children."""
    script = ("import json, resource, subprocess, sys\n"
              "peaks = []\n"
              "for cmd in json.loads(sys.argv[1]):\n"
              "    done = subprocess.run(cmd, capture_output=True, text=True)\n"
              "    assert done.returncode == 0, done.stderr\n"
              "    peaks.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
              "print(json.dumps(peaks))\n")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_classify_memory_follows_the_model_not_the_video_resolution(tmp_path):
    """A 3-frame 6000 x 6000 video (a few hundred KB): the clip of 16 looped frames would be 1.7 GB at full size."""
    av = pytest.importorskip("av")
    from tests.videos import write_video

    size = 6000
    huge = tmp_path / "huge.mp4"
    with av.open(str(huge), "w") as container:
        stream = container.add_stream("libx264", rate=8, options={"preset": "ultrafast"})
        stream.width = stream.height = size
        for i in range(3):  # flat colour and one square: compresses to almost nothing
            frame = np.full((size, size, 3), 40 * i + 50, np.uint8)
            frame[size // 4 : size // 2, size // 4 : size // 2] = 200
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            del frame
        container.mux(stream.encode())
    small = write_video(tmp_path / "small.mp4", num_frames=8, height=48, width=64)
    assert huge.stat().st_size < 2_000_000
    command = [sys.executable, "-m", "vivit", "classify", "--model", "vivit_motion", "--views", "1x1"]
    baseline, peak = _peak_rss_mb(command + [str(small)], command + [str(huge)], env=_offline_env(tmp_path))
    full_clip_mb = 16 * size * size * 3 / 2**20  # vivit_motion's 16-frame clip as full-size uint8 frames
    assert peak - baseline < full_clip_mb / 3, (baseline, peak)


def test_classify_names_each_hostile_file_in_one_line_and_goes_on(tmp_path):
    pytest.importorskip("av")
    import os

    from tests.videos import write_audio_only, write_truncated, write_video

    good = write_video(tmp_path / "vidéo 日本 ✓.mp4", num_frames=12)  # a unicode name is just a name
    bad = {"empty.mp4": "is empty (0 bytes)", "notes.mp4": "FFmpeg cannot read it as a video",
           "cut.mp4": "FFmpeg cannot read it as a video", "folder.mp4": "is a folder",
           "missing.mp4": "no such file", "one.mp4": "has a single frame", "audio.wav": "has no video stream",
           "pipe.mp4": "is not a regular file", "nothing.mp4": "has no video stream (the container is empty)"}
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video\n" * 20)
    write_truncated(tmp_path / "cut.mp4", write_video(tmp_path / "long.mp4", num_frames=60))
    (tmp_path / "folder.mp4").mkdir()
    write_video(tmp_path / "one.mp4", num_frames=1)
    write_audio_only(tmp_path / "audio.wav")
    os.mkfifo(tmp_path / "pipe.mp4")  # opening it would block forever: it must be refused before FFmpeg sees it
    import av

    with av.open(str(tmp_path / "nothing.mp4"), "w") as container:  # a header, and no frame: no stream is written
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    out = run_cli("classify", "--model", "vivit_motion", "--views", "1x1", "--json", good,
                  *(tmp_path / name for name in bad), env=_offline_env(tmp_path))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = _failures(out.stderr)
    assert len(lines) == len(bad) + 1 and lines[-1] == f"vivit classify: {len(bad)} of {len(bad) + 1} videos failed"
    for line, (name, message) in zip(lines, bad.items(), strict=False):
        assert line.startswith(str(tmp_path / name)) and message in line, line
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["video"] == str(good)


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    from vivit.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("raised", "code", "message"), [
    (KeyboardInterrupt(), 130, ""),
    (MemoryError(), 1, "clip.mp4: out of memory while decoding or classifying it; free memory or use a smaller "
                       "--batch-size"),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"), 1, "clip.mp4: out of memory while decoding or "
                                                                        "classifying it; free memory or use a smaller "
                                                                        "--batch-size"),
])
def test_classify_interrupted_or_out_of_memory_is_one_line_with_its_exit_code(raised, code, message, monkeypatch,
                                                                               capsys):
    import vivit.tasks.predict

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(vivit.tasks.predict, "predict_video", fail)
    got, out, err = _main(["classify", "--model", "vivit_motion", "clip.mp4"], capsys)
    assert got == code and out == ""
    assert _failures(err) == ([message, "vivit classify: 1 of 1 videos failed"] if message else [])


@pytest.mark.parametrize("logits", [[float("nan"), 1.0, 2.0], [float("inf"), 0.0, 0.0]])
def test_classify_refuses_non_finite_scores_so_json_stays_strict(logits, monkeypatch, capsys):
    import vivit.tasks.predict

    def predict(model, path, *args, **kwargs):
        return torch.tensor(logits if path.name == "broken.mp4" else [3.0, 1.0, 0.0] + [0.0] * 7)

    monkeypatch.setattr(vivit.tasks.predict, "predict_video", predict)
    code, out, err = _main(["classify", "--model", "vivit_motion", "--json", "broken.mp4", "fine.mp4"], capsys)
    assert code == 1 and _failures(err)[0].startswith("broken.mp4: the model's logits are not finite (NaN or Inf)")

    def strict(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    (row,) = [json.loads(line, parse_constant=strict) for line in out.splitlines()]
    assert row["video"] == "fine.mp4" and row["top_k"][0]["index"] == 0


def test_classify_stops_quietly_with_130_on_ctrl_c(tmp_path):
    pytest.importorskip("av")
    import signal

    from tests.videos import write_video

    video = write_video(tmp_path / "v.mp4", num_frames=8)
    # A shell's background jobs inherit an ignored SIGINT; a terminal's Ctrl-C reaches a process with the default.
    process = subprocess.Popen([sys.executable, "-m", "vivit", "classify", "--model", "vivit_motion", "--views", "1x1",
                                *[str(video)] * 500], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=_offline_env(tmp_path),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert process.stdout.readline().startswith(str(video))  # classifying, with many videos still to go
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err[-2000:]
    assert _failures(err) == [] and len(out.splitlines()) < 499


def test_demo_refuses_a_non_positive_count_and_a_file_as_its_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _main(["demo", "--num", "0"], capsys)
    assert exit_info.value.code == 2 and "must be a positive integer" in capsys.readouterr().err
    (tmp_path / "f").write_text("")
    code, out, err = _main(["demo", "--num", "1", "--out", str(tmp_path / "f")], capsys)
    assert code == 1 and err == f"vivit demo: --out {tmp_path / 'f'} is a file; expected a folder for the clips (it " \
                                "is created if missing)\n"


def test_explain_into_an_unwritable_folder_is_one_line_naming_the_image(tmp_path, capsys):
    pytest.importorskip("av")
    pytest.importorskip("matplotlib")
    from tests.videos import write_video

    video = write_video(tmp_path / "clip.mp4", num_frames=20)
    (tmp_path / "file").write_text("")
    code, out, err = _main(["explain", str(video), "--model", "vivit_motion", "--out", str(tmp_path / "file" / "maps")],
                           capsys)
    target = tmp_path / "file" / "maps" / "clip_attention.png"
    assert code == 1 and out == "" and err.startswith(f"vivit explain: {target}: cannot write the image (")
    assert len(err.splitlines()) == 1 and ".part" not in err


@pytest.mark.parametrize("argv", [["--version"], ["list", "vivit_b*"], ["-v", "list", "--pretrained"]])
def test_version_and_list_import_neither_torch_nor_timm(argv):
    # What the `vivit` console script runs (sys.argv[0] is the script), and `python -m vivit`.
    script = ("import sys\nsys.argv = ['vivit', *sys.argv[1:]]\nfrom vivit.cli import main\n"
              "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as stop:\n    code = stop.code\n"
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm'))\n"
              "print('HEAVY', heavy, code)\n")
    out = subprocess.run([sys.executable, "-c", script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.splitlines()[-1] == "HEAVY [] 0", out.stdout + out.stderr
    timed = subprocess.run([sys.executable, "-X", "importtime", "-m", "vivit", *argv], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert timed.returncode == 0 and not [line for line in timed.stderr.splitlines()
                                          if line.rstrip().endswith(("| torch", "| timm"))]


def test_dataset_commands_have_a_description_defaults_and_exit_status_in_help(capsys):
    from vivit.data.datasets import KINETICS_PATTERN

    for command in ("evaluate", "extract"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "multi-view averaging" in text or "Extract pooled pre-logits" in text
        assert "(default: 16)" in text and "(default: 100)" in text and "(default: 2)" in text
        assert f"(default: {KINETICS_PATTERN})" in text and "1 some videos failed" in text


MODEL_COMMANDS = ("classify", "evaluate", "extract", "timeline")


def _flags(command: str) -> dict[str, argparse.Action]:
    """The option actions of ``vivit COMMAND`` by flag."""
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {flag: action for action in sub.choices[command]._actions for flag in action.option_strings}


def test_every_model_command_lists_the_same_model_flags_in_help(capsys):
    model_flags = {"--model", "--device", "--dtype", "--backend", "--token-merging", "--drop-static",
                   "--force-download", "--calibration", "--calibration-clips"}
    helps = {}
    for command in MODEL_COMMANDS:
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([command, "--help"])
        helps[command] = capsys.readouterr().out
        assert all(flag in helps[command] for flag in model_flags), command
    # declared once: the same choices, defaults and help everywhere (--model is required where it has no default)
    first = _flags("classify")
    for command in MODEL_COMMANDS:
        flags = _flags(command)
        for flag in model_flags - {"--model"}:
            assert (flags[flag].choices, flags[flag].default, flags[flag].help) == (
                first[flag].choices, first[flag].default, first[flag].help), (command, flag)


@pytest.mark.parametrize("command", [["classify", "clip.mp4"], ["evaluate", "list.csv", "--model", "m", "--out", "o"],
                                     ["timeline", "clip.mp4", "--out", "o"]])
@pytest.mark.parametrize("value", ["2.5", "true", "(1, 2, 3"])
def test_a_bad_token_merging_is_bad_usage_before_loading(command, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args([*command, "--token-merging", value])
    assert exit_.value.code == 2 and "--token-merging" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "-0.1", "3", "much"])
def test_a_bad_drop_static_is_bad_usage(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["classify", "clip.mp4", "--drop-static", value])
    assert exit_.value.code == 2 and "--drop-static" in capsys.readouterr().err


def test_drop_static_with_openvino_is_bad_usage_before_loading(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["classify", "no-such.mp4", "--drop-static", "0.1", "--backend", "openvino"])
    assert exit_.value.code == 2 and "converted OpenVINO graph" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "17", "1e9", "two"])
def test_workers_beyond_the_bound_are_bad_usage(value, capsys):
    from vivit.tasks.run import MAX_WORKERS, RunOptions

    assert cli.MAX_WORKERS == MAX_WORKERS  # the parser's copy (it imports no torch) is the library's bound
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["evaluate", "list.csv", "--model", "m", "--out", "o", "--workers", value])
    assert exit_.value.code == 2 and "--workers" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"workers must be an integer from 0 to {MAX_WORKERS}"):
        RunOptions(workers=MAX_WORKERS + 1)


# --- flags the model's config refuses, found before any weights are read (issue 31) -----------------------------------

def _unloadable(folder: Path, **args) -> Path:
    """A saved model whose weights file is garbage: loading it fails, so a refusal that names the flag (and not
    "damaged") was made from its config.json alone, before any weights were read."""
    torch.manual_seed(0)
    vivit.ViViT(img_size=32, num_frames=4, tubelet_size=(2, 8, 8), embed_dim=32, depth=2, num_heads=2, mlp_dim=64,
                num_classes=10, **args).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    return folder


@pytest.mark.parametrize("command", [["classify", "clip.mp4"], ["evaluate", "list.csv", "--out", "o"],
                                     ["extract", "list.csv", "--out", "o"], ["timeline", "clip.mp4", "--out", "o"]])
def test_token_merging_beyond_the_models_tokens_is_bad_usage_before_any_weights_are_read(command, tmp_path, capsys,
                                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _unloadable(tmp_path / "m1")  # Model 1: 2 x 4 x 4 = 32 tokens, so r <= 16
    code, _, err = _main([*command, "--model", str(model), "--token-merging", "20"], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "--token-merging 20" in err and "32 tokens" in err
    assert "largest valid r is 16" in err and "damaged" not in err
    code, _, err = _main([*command, "--model", str(model), "--token-merging", "(9, -1)"], capsys)
    assert code == 2 and "largest valid r is 8" in err  # (r, inflection) merges 2r in its first block
    code, _, err = _main([*command, "--model", str(model), "--token-merging", "16"], capsys)
    assert code == 1 and "damaged" in err  # a valid r goes on to load (and these weights fail)


def test_model_3_merging_and_model_2_static_skipping_are_bad_usage_before_any_weights_are_read(tmp_path, capsys):
    fsa = _unloadable(tmp_path / "m3", variant="factorized_self_attention", global_pool="avg")
    code, _, err = _main(["classify", "clip.mp4", "--model", str(fsa), "--token-merging", "2"], capsys)
    assert code == 2 and "--token-merging 2" in err and "cannot merge tokens" in err and "damaged" not in err
    fe = _unloadable(tmp_path / "m2", variant="factorized_encoder", temporal_depth=1)
    code, _, err = _main(["timeline", "clip.mp4", "--out", "o", "--model", str(fe), "--drop-static", "0.1"], capsys)
    assert code == 2 and "--drop-static" in err and "Model 1" in err and "damaged" not in err
    code, _, err = _main(["classify", "clip.mp4", "--model", str(fe), "--token-merging", "9"], capsys)
    assert code == 2 and "16 tokens (CLS excepted) in a frame" in err and "largest valid r is 8" in err
    code, _, err = _main(["classify", "clip.mp4", "--model", "vivit_motion", "--token-merging", "[1, 1, 1]"], capsys)
    assert code == 2 and "3 values for 2 blocks" in err  # a zoo name: the zoo's data


@pytest.mark.parametrize("args", [dict(), dict(variant="factorized_encoder", temporal_depth=1),
                                  dict(embedding="frame_sampling", n_sampled_frames=3, tubelet_size=(1, 8, 8)),
                                  dict(img_size=(24, 40), tubelet_size=(1, 8, 8), global_pool="avg")])
def test_the_pre_load_bound_is_the_models_own(args):
    """The CLI's check from the arguments alone accepts exactly the r the built model accepts."""
    from vivit.model.args import check_token_merging, merged_tokens
    from vivit.weights.config import with_defaults

    full = with_defaults({"img_size": 32, "num_frames": 4, "tubelet_size": (2, 8, 8), "embed_dim": 32, "depth": 2,
                          "num_heads": 2, "mlp_dim": 64, "num_classes": 3, **args})
    most = merged_tokens(full) // 2
    check_token_merging(full, most)
    vivit.ViViT(**{**full, "token_merging": most})
    with pytest.raises(ValueError, match=f"largest valid r is {most}"):
        check_token_merging(full, most + 1)
    with pytest.raises(ValueError, match="at most"):
        vivit.ViViT(**{**full, "token_merging": most + 1})


def test_a_timeline_resume_with_other_flags_is_bad_usage_before_any_weights_are_read(tmp_path, capsys):
    model, out = _unloadable(tmp_path / "m1"), tmp_path / "out"
    out.mkdir()
    recorded = {"video": "clip.mp4", "token_merging": 4, "drop_static": 0.0, "crops": 1, "top_k": 5, "batch_size": 8}
    (out / "run.json").write_text(json.dumps(recorded))
    code, _, err = _main(["timeline", "clip.mp4", "--out", str(out), "--model", str(model), "--token-merging", "8"],
                         capsys)
    assert code == 2 and "other settings" in err and "token_merging was 4, now 8" in err and "damaged" not in err
    code, _, err = _main(["timeline", "clip.mp4", "--out", str(out), "--model", str(model), "--token-merging", "4",
                          "--crops", "3"], capsys)
    assert code == 2 and "crops was 1, now 3" in err
    code, _, err = _main(["timeline", "clip.mp4", "--out", str(out), "--model", str(model), "--token-merging", "4"],
                         capsys)
    assert code == 1 and "damaged" in err  # the same flags: on to the model
    (out / "run.json").write_text("{not json")
    code, _, err = _main(["timeline", "clip.mp4", "--out", str(out), "--model", str(model), "--token-merging", "8"],
                         capsys)
    assert code == 1 and "run.json: is not valid JSON" in err  # a damaged file is no usage error


def test_a_hub_models_flags_are_checked_from_its_config_alone(tmp_path):
    from tests.hub_server import HubServer

    folder = _unloadable(tmp_path / "repo")
    with HubServer(repos={"vivit-test/m1": folder}) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VIVIT_"))}
        env.update(HF_ENDPOINT=server.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1",
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONPATH=str(ROOT))
        out = run_cli("classify", "clip.mp4", "--model", "hf-hub:vivit-test/m1", "--token-merging", "17", env=env)
        requested = [path for _, path in server.requests]
    assert out.returncode == 2 and "largest valid r is 16" in out.stderr, out.stderr
    assert any(p.endswith("config.json") for p in requested)
    assert not any("safetensors" in p for p in requested)  # the weights were never asked for


def test_a_video_that_fails_at_once_names_its_path_once(tmp_path, capsys):
    from vivit.data.video import write_video

    still = write_video(tmp_path / "still.mp4", np.zeros((1, 32, 32, 3), np.uint8), fps=8)
    code, _, err = _main(["timeline", str(still), "--model", "vivit_motion", "--out", str(tmp_path / "out"),
                          "--backend", "torch", "--dtype", "float32"], capsys)
    failure = [line for line in err.splitlines() if "single frame" in line]
    assert code == 1 and len(failure) == 1 and failure[0].count(str(still)) == 1
    assert "windows before it" not in failure[0]  # none were made
# ------------------------------------------------------------------------------------------------ --dtype int8
def _listing(tmp_path: Path, videos: int = 2) -> Path:
    pytest.importorskip("av")
    from tests.videos import write_video

    rows = [write_video(tmp_path / f"v{i}.mp4", num_frames=12 + 4 * i, height=40, width=48).name for i in range(videos)]
    (tmp_path / "calib.csv").write_text("".join(f"{row}\n" for row in rows))
    return tmp_path / "calib.csv"


@pytest.mark.parametrize(("flags", "message"), [
    (["--dtype", "int8"], "--dtype int8 needs --calibration LISTING"),
    (["--calibration", "LISTING"], "--calibration is for --dtype int8"),
    (["--calibration-clips", "4"], "--calibration-clips is for --dtype int8"),
    (["--dtype", "int8", "--calibration", "LISTING", "--backend", "torch"], "not torch: use --backend auto or "
                                                                            "openvino"),
    (["--dtype", "int8", "--calibration", "LISTING", "--device", "cuda"], "runs on the CPU (OpenVINO), not cuda"),
    (["--dtype", "int8", "--calibration", "LISTING", "--drop-static", "0.1"], "drop it for --dtype int8"),
    (["--dtype", "int8", "--calibration", "MISSING"], "--calibration: MISSING: no such file or folder"),
    (["--dtype", "int8", "--calibration", "EMPTY"], "--calibration: EMPTY: has no rows"),
])
@pytest.mark.parametrize("command", [["classify", "clip.mp4"], ["evaluate", "list.csv", "--out", "o"],
                                     ["extract", "list.csv", "--out", "o"], ["timeline", "clip.mp4", "--out", "o"]])
def test_int8_flags_used_wrongly_are_one_line_of_bad_usage_before_loading(command, flags, message, tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "list.csv").write_text("clip.mp4\n")
    names = {"LISTING": str(tmp_path / "list.csv"), "MISSING": str(tmp_path / "missing.csv"),
             "EMPTY": str(tmp_path / "empty.csv")}
    argv = [*command, "--model", "no-such-model", *[names.get(f, f) for f in flags]]
    code, out, err = _main(argv, capsys)  # the model name does not exist: a check after loading would say so
    assert code == 2 and out == "", err
    want = message.replace("MISSING", names["MISSING"]).replace("EMPTY", names["EMPTY"])
    assert want in err and len(err.strip().splitlines()) == 1 and "no-such-model" not in err


def test_int8_extract_layer_and_missing_extra_are_one_line_before_loading(tmp_path, capsys, monkeypatch):
    (tmp_path / "list.csv").write_text("clip.mp4\n")
    int8 = ["--model", "no-such-model", "--dtype", "int8", "--calibration", str(tmp_path / "list.csv")]
    code, _, err = _main(["extract", "list.csv", "--out", "o", *int8, "--layer", "0"], capsys)
    assert code == 2 and "--layer runs in torch: drop it for --dtype int8" in err
    code, _, err = _main(["evaluate", "list.csv", "--out", "o", *int8, "--compile"], capsys)
    assert code == 2 and "--compile runs in torch" in err
    monkeypatch.setitem(sys.modules, "nncf", None)
    code, _, err = _main(["classify", "clip.mp4", *int8], capsys)
    assert code == 2 and 'nncf not installed): pip install "vivit[int8]"' in err and len(err.splitlines()) == 1


def _int8_model(tmp_path: Path) -> Path:
    model = vivit.ViViT(variant="factorized_encoder", img_size=32, num_frames=8, tubelet_size=(2, 16, 16),
                        embed_dim=16, depth=1, temporal_depth=1, num_heads=2, mlp_dim=32, num_classes=3)
    torch.nn.init.normal_(model.head.weight)
    model.save_pretrained(tmp_path / "model", label_names=["left", "right", "still"])
    return tmp_path / "model"


def test_classify_int8_calibrates_on_the_listing_and_runs_openvino(tmp_path, capsys, monkeypatch):
    pytest.importorskip("nncf")
    listing = _listing(tmp_path)
    monkeypatch.setenv("VIVIT_CACHE", str(tmp_path / "cache"))
    argv = ["classify", str(tmp_path / "v0.mp4"), "--model", str(_int8_model(tmp_path)), "--views", "2x1",
            "--dtype", "int8", "--calibration", str(listing), "--calibration-clips", "3", "--json"]
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    assert json.loads(out)["top_k"][0]["label"] in {"left", "right", "still"}  # stdout is JSON only (NNCF: stderr)
    assert "--dtype int8: 3 calibration clips from" in err
    runtime = [line for line in err.splitlines() if line.startswith("vivit classify: backend ")]
    assert len(runtime) == 1 and "openvino" in runtime[0] and "int8" in runtime[0] and "quantized" in runtime[0]
    code, _, err = _main(argv, capsys)  # the same clips: the cached quantized model
    assert code == 0 and "read from" in err


def test_evaluate_int8_records_the_calibration_set_and_refuses_a_resume_with_another(tmp_path, capsys, monkeypatch):
    pytest.importorskip("nncf")
    listing = _listing(tmp_path, videos=3)
    (tmp_path / "other.csv").write_text("v2.mp4\nv1.mp4\n")
    labelled = tmp_path / "eval.csv"
    labelled.write_text("v0.mp4,left\nv1.mp4,right\n")
    monkeypatch.setenv("VIVIT_CACHE", str(tmp_path / "cache"))
    argv = ["evaluate", str(labelled), "--model", str(_int8_model(tmp_path)), "--views", "1x1", "--workers", "0",
            "--dtype", "int8", "--out", str(tmp_path / "out"), "--calibration-clips", "2", "--calibration"]
    code, _, err = _main([*argv, str(listing)], capsys)
    assert code == 0, err
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["dtype"] == "int8" and run["backend"] == "openvino" and len(run["calibration"]) == 64
    code, _, err = _main([*argv, str(tmp_path / "other.csv")], capsys)  # other clips: another model, not mixed in
    assert code == 1 and "calibration" in err and "other settings" in err
