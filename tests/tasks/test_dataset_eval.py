"""``vivit evaluate`` / ``vivit extract`` end to end on real video files of generated motion clips.

One module-scoped set of clips (3 per class, written with PyAV) plus a garbage file, a truncated file and a missing
one; one uninterrupted single-process evaluation is shared by the tests that compare against it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

import vivit  # noqa: E402
from tests.processes import run_group, torchrun  # noqa: E402
from tests.videos import write_truncated  # noqa: E402
from vivit import cli  # noqa: E402
from vivit.data.datasets import DataError  # noqa: E402
from vivit.data.synthetic import MOTION_CLASSES, make_clip  # noqa: E402
from vivit.data.video import multi_view_clips, write_video  # noqa: E402
from vivit.tasks.evaluate import evaluate_dataset, extract_features, load_features  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PER_CLASS = 3
BROKEN = ("garbage.mp4", "truncated.mp4", "gone.mp4")
# float32: these runs check files and lines, not speed (--dtype auto would pick bfloat16 and say so on stderr)
EVAL_ARGS = ("--model", "vivit_motion", "--batch-size", "4", "--workers", "1", "--dtype", "float32")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """``list.csv`` (path,label) over 30 motion clips at the model's 16 frames x 32², then the 3 broken rows."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for k in range(PER_CLASS):
        for label, name in enumerate(MOTION_CLASSES):
            path = write_video(root / f"{name}_{k}.mp4", make_clip(label, rng, num_frames=16, size=32), fps=8)
            rows.append(f"{path.name},{name}")
    (root / "garbage.mp4").write_bytes(b"this is not a video")
    write_truncated(root / "truncated.mp4", root / f"{MOTION_CLASSES[0]}_0.mp4")
    rows += [f"{name},{MOTION_CLASSES[i]}" for i, name in enumerate(BROKEN)]
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return vivit.create_model("vivit_motion", pretrained=True).eval()


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory) -> Path:
    """The uninterrupted single-process run; what it printed is in ``stdout.txt`` / ``stderr.txt``."""
    out = tmp_path_factory.mktemp("reference")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        # exit status 1: the three broken files failed (the outputs are complete all the same)
        assert cli.main(["evaluate", str(clips / "list.csv"), "--out", str(out), *EVAL_ARGS]) == 1
    (out / "stdout.txt").write_text(stdout.getvalue())
    (out / "stderr.txt").write_text(stderr.getvalue())
    return out


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


# Two runs that batch the videos differently (2 ranks, or a resume) may round differently: oneDNN picks its kernels
# by batch size and CPU (on an Intel Xeon with AMX, 11 of 330 logits of a 2-rank run differed by 9.5e-7). Files are
# the same run when every discrete field is equal and every float is within this tolerance.
FLOAT_TOL = 1e-5


def _assert_close(got: object, want: object, where: str = "") -> None:
    """Equal structure and discrete values; floats within ``FLOAT_TOL``."""
    if isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, abs=FLOAT_TOL, rel=FLOAT_TOL), where
    elif isinstance(want, dict) and isinstance(got, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list) and isinstance(got, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_close(a, b, f"{where}[{i}]")
    else:
        assert got == want, where


def _assert_same_run(out: Path, reference: Path) -> None:
    """``out`` holds ``reference``'s report, predictions and logits (floats within ``FLOAT_TOL``)."""
    _assert_close(_report(out), _report(reference), "report")
    _assert_close(_lines(out), _lines(reference), "predictions")
    np.testing.assert_allclose(np.load(out / "logits.npy"), np.load(reference / "logits.npy"),
                               rtol=FLOAT_TOL, atol=FLOAT_TOL)


def test_evaluate_reaches_the_weights_accuracy_and_lists_every_broken_file(clips, reference, capsys):
    report = _report(reference)
    n = PER_CLASS * len(MOTION_CLASSES)
    assert report["top1"] >= 95.0 and report["top5"] >= report["top1"]
    assert report["mean_class_accuracy"] >= 95.0
    assert (report["num_videos"], report["num_evaluated"], report["num_failed"]) == (n + 3, n, 3)
    assert [Path(f["path"]).name for f in report["failed"]] == list(BROKEN)
    assert all(f["reason"] and "\n" not in f["reason"] for f in report["failed"])
    assert report["top1_failed_as_wrong"] == pytest.approx(report["top1"] * n / (n + 3), abs=1e-3)
    assert report["model"] == "vivit_motion.synthetic" and report["views"] == "1x1"

    lines = _lines(reference)
    assert [e["index"] for e in lines] == list(range(n + 3))
    logits = np.load(reference / "logits.npy")
    assert logits.shape == (n + 3, len(MOTION_CLASSES)) and np.isnan(logits[n:]).all()
    for entry in lines[:n]:  # top-5 is the softmax of the stored logits row
        probs = torch.softmax(torch.from_numpy(logits[entry["logits_row"]]).double(), 0)
        assert [t["index"] for t in entry["top5"]] == probs.topk(5).indices.tolist()
    assert [e["status"] for e in lines[n:]] == ["failed"] * 3
    correct = sum(e["top5"][0]["label"] == e["label"] for e in lines[:n])
    assert report["top1"] == pytest.approx(100 * correct / n, abs=1e-3)

    table = (reference / "per_class.csv").read_text().splitlines()
    assert table[0].startswith("part,index,class,videos,top1") and len(table) == 1 + len(MOTION_CLASSES)
    assert (reference / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_prints_the_summary_and_each_failure_on_the_command_line(clips, reference):
    assert "top1 " in (reference / "stdout.txt").read_text()
    assert all(f"failed: {clips / name}: " in (reference / "stderr.txt").read_text() for name in BROKEN)


def test_two_gloo_ranks_write_the_single_process_report_and_predictions(clips, reference, tmp_path):
    result = torchrun("-m", "vivit", "evaluate", str(clips / "list.csv"), "--out", str(tmp_path), *EVAL_ARGS,
                      timeout=300, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 1, result.stderr[-4000:]  # 1: the broken files failed
    assert "rank 0: 17 videos" in result.stderr  # 33 rows: rank 0 takes 17, rank 1 the other 16
    _assert_same_run(tmp_path, reference)
    assert not list(tmp_path.glob("predictions.rank*.jsonl"))  # merged and removed


def test_a_stopped_run_resumes_and_ends_with_the_uninterrupted_report(clips, reference, tmp_path):
    listing = str(clips / "list.csv")
    stopped = cli.main(["evaluate", listing, "--out", str(tmp_path), *EVAL_ARGS, "--stop-after", "8"])
    assert stopped == cli.STOPPED_EXIT_CODE and not (tmp_path / "report.json").exists()
    assert len(_lines(tmp_path)) == 8
    with open(tmp_path / "predictions.jsonl", "a") as f:
        f.write('{"index": 9, "path": "cut by a ki')  # what a kill in the middle of a write leaves
    assert cli.main(["evaluate", listing, "--out", str(tmp_path), *EVAL_ARGS]) == 1  # the broken files
    _assert_same_run(tmp_path, reference)


def test_continuing_with_other_settings_is_refused(clips, reference, tmp_path):
    listing = clips / "list.csv"
    evaluate_dataset(listing, "vivit_motion", tmp_path, batch_size=4, workers=0, stop_after=1)
    with pytest.raises(ValueError, match=r"views was '1x1', now '2x1'.*another --out"):
        evaluate_dataset(listing, "vivit_motion", tmp_path, views="2x1", workers=0)


def test_continuing_with_relabelled_rows_is_refused(clips, reference, tmp_path):
    rows = (clips / "list.csv").read_text().splitlines()
    header, first, *rest = rows
    path, label = first.rsplit(",", 1)
    path = str(clips / path)  # the copy lives in another folder
    other = next(r.rsplit(",", 1)[1] for r in rest if r.rsplit(",", 1)[1] != label)
    listing = tmp_path / "list.csv"
    listing.write_text(f"{header}\n{path},{label}\n")
    evaluate_dataset(listing, "vivit_motion", tmp_path / "out", batch_size=4, workers=0, stop_after=1)
    listing.write_text(f"{header}\n{path},{other}\n")
    with pytest.raises(ValueError, match="the listing's rows differ"):
        evaluate_dataset(listing, "vivit_motion", tmp_path / "out", workers=0)


def test_unknown_labels_are_refused_with_their_rows(clips, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,label\n{clips / 'static_0.mp4'},statik\n")
    with pytest.raises(DataError, match=r"bad.csv:2: 'statik'.*static"):
        evaluate_dataset(bad, "vivit_motion", tmp_path / "out", workers=0)


def test_folder_labels_with_underscores_or_spaces_and_index_labels_all_match(clips, model, tmp_path):
    # "moving up" (Kinetics CSV spelling), "MOVING_UP" and "0" all name class 0.
    listing = tmp_path / "l.csv"
    listing.write_text(f"path,label\n{clips / 'moving_up_0.mp4'},moving up\n{clips / 'moving_up_1.mp4'},MOVING_UP\n"
                       f"{clips / 'moving_up_2.mp4'},0\n")
    report = evaluate_dataset(listing, model, tmp_path / "out", workers=0)
    assert report["num_labelled"] == 3 and report["top1"] == 100.0


def test_split_head_reports_each_part_and_the_action(clips, model, tmp_path):
    import copy

    split = copy.deepcopy(model)
    # Pretend the 10 logits are two heads (8 motions | 2 others), as EPIC-Kitchens' 300 nouns | 97 verbs.
    split.pretrained_cfg = {**model.pretrained_cfg, "class_splits": (8, 2), "label_set": None}
    names = MOTION_CLASSES
    rows = ["path,label"]
    for k in range(PER_CLASS):
        for c in range(8):
            rows.append(f"{clips / f'{names[c]}_{k}.mp4'},{names[c]}|{names[8 + (c + k) % 2]}")
    listing = tmp_path / "split.csv"
    listing.write_text("\n".join(rows) + "\n")
    report = evaluate_dataset(listing, split, tmp_path / "out", workers=0)
    logits = np.load(tmp_path / "out" / "logits.npy")
    first = logits[:, :8].argmax(1) == np.tile(np.arange(8), PER_CLASS)
    second = logits[:, 8:].argmax(1) == np.array([(c + k) % 2 for k in range(PER_CLASS) for c in range(8)])
    assert report["class_splits"] == [8, 2] and set(report["parts"]) == {"part0", "part1"}
    assert report["parts"]["part0"]["top1"] == pytest.approx(100 * first.mean(), abs=1e-3)
    assert report["parts"]["part1"]["top1"] == pytest.approx(100 * second.mean(), abs=1e-3)
    assert report["top1"] == pytest.approx(100 * (first & second).mean(), abs=1e-3)
    assert "top5_by_split" in _lines(tmp_path / "out")[0]


def test_extract_features_equal_forward_head_pre_logits_per_clip_and_per_video(clips, model, tmp_path):
    paths = [clips / f"{MOTION_CLASSES[c]}_0.mp4" for c in range(4)]
    listing = tmp_path / "files.txt"  # a bare list: no labels needed
    listing.write_text("\n".join(map(str, [*paths, clips / "garbage.mp4"])) + "\n")
    index = extract_features(listing, model, tmp_path / "clip", per_clip=True, views="2x1", batch_size=3, workers=0,
                             shard_size=2)
    assert index["num_extracted"] == 4 and [Path(f["path"]).name for f in index["failed"]] == ["garbage.mp4"]
    per_clip, rows = load_features(tmp_path / "clip")
    views = torch.cat([multi_view_clips(p, model, (2, 1)) for p in paths])
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(views), pre_logits=True)
    assert [r["path"] for r in rows] == [str(p) for p in paths for _ in range(2)]
    torch.testing.assert_close(per_clip, expected, atol=1e-5, rtol=1e-5)

    extract_features(listing, model, tmp_path / "video", views="2x1", workers=0)
    per_video, rows = load_features(tmp_path / "video")
    assert len(rows) == 4 and per_video.shape == (4, model.num_features)
    torch.testing.assert_close(per_video, expected.view(4, 2, -1).mean(1), atol=1e-5, rtol=1e-5)


def test_extract_of_a_block_is_its_token_mean_and_resumes_after_a_stop(clips, model, tmp_path):
    paths = [clips / f"{MOTION_CLASSES[c]}_1.mp4" for c in range(5)]
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    args = ["extract", str(listing), "--model", "vivit_motion", "--out", str(tmp_path / "o"), "--layer", "0",
            "--shard-size", "2", "--batch-size", "1", "--workers", "0", "--dtype", "float32"]
    assert cli.main([*args, "--stop-after", "3"]) == cli.STOPPED_EXIT_CODE  # 1 shard written, 1 video pending
    assert len(list((tmp_path / "o" / "shards").glob("*.safetensors"))) == 1
    assert cli.main(args) == 0
    features, rows = load_features(tmp_path / "o")
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    views = torch.cat([multi_view_clips(p, model, (1, 1)) for p in paths])
    with torch.no_grad():
        (tokens,) = model.forward_intermediates(views, indices=[0], norm=True, output_fmt="NLC",
                                                intermediates_only=True)
    torch.testing.assert_close(features, tokens.mean(1), atol=1e-5, rtol=1e-5)


def test_a_listing_none_of_whose_files_exists_is_refused_before_any_work(tmp_path):
    listing = tmp_path / "l.csv"
    listing.write_text("path,label\nvideos/a.mp4,static\nvideos/b.mp4,blinking\n")  # e.g. a wrong folder
    with pytest.raises(DataError, match=r"none of the 2 listed files exists \(first: .*videos/a.mp4\)"):
        evaluate_dataset(listing, "vivit_motion", tmp_path / "out", workers=0)
    assert not (tmp_path / "out").exists()


def test_an_unlabelled_list_gets_predictions_and_no_accuracy(clips, model, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text(f"{clips / 'static_0.mp4'}\n{clips / 'garbage.mp4'}\n")
    report = evaluate_dataset(listing, model, tmp_path / "out", workers=0)
    assert (report["num_labelled"], report["num_evaluated"], report["num_failed"]) == (0, 1, 1)
    assert report["top1"] is None and report["per_class"] is None and report["confusion_png"] is None
    first = _lines(tmp_path / "out")[0]
    assert first["label"] is None and first["top5"][0]["label"] == "static"


# ------------------------------------------------------------------------------------------------ what a run trusts
def _small(clips: Path, tmp_path: Path, n: int = 3) -> Path:
    listing = tmp_path / "small.csv"
    listing.write_text("path,label\n" + "".join(f"{clips / f'{MOTION_CLASSES[c]}_0.mp4'},{MOTION_CLASSES[c]}\n"
                                                for c in range(n)))
    return listing


def test_resuming_with_other_weights_of_the_same_architecture_is_refused(clips, model, tmp_path):
    import copy

    listing = _small(clips, tmp_path)
    evaluate_dataset(listing, model, tmp_path / "out", workers=0, stop_after=1)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.bias += 1.0  # same architecture and tag, other weights
    with pytest.raises(ValueError, match=r"the model's weights differ.*another --out"):
        evaluate_dataset(listing, other, tmp_path / "out", workers=0)
    assert evaluate_dataset(listing, model, tmp_path / "out", workers=0)["num_evaluated"] == 3


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(clips, model, tmp_path):
    pytest.importorskip("fcntl")
    listing, out = _small(clips, tmp_path, 1), tmp_path / "out"
    out.mkdir()
    hold = ("import fcntl, sys, time\nf = open(sys.argv[1], 'a+')\nfcntl.flock(f, fcntl.LOCK_EX)\nf.write('4242')\n"
            "f.flush()\nprint('locked', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=r"another vivit process \(pid 4242\) is writing this folder"):
            evaluate_dataset(listing, model, out, workers=0)
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the system drops the lock
        holder.wait()
    assert evaluate_dataset(listing, model, out, workers=0)["num_evaluated"] == 1


def test_deleted_or_damaged_logits_are_evaluated_again_never_reported_as_nan(clips, model, tmp_path):
    listing, out = _small(clips, tmp_path), tmp_path / "out"
    first = evaluate_dataset(listing, model, out, workers=0)
    logits = np.load(out / "logits.npy")
    assert first["top1"] == 100.0 and np.isfinite(logits).all()
    (out / "logits.npy").unlink()
    assert evaluate_dataset(listing, model, out, workers=0) == first
    np.testing.assert_array_equal(np.load(out / "logits.npy"), logits)
    table = np.load(out / "logits.npy", mmap_mode="r+")
    table[1] = np.nan  # one damaged row
    table.flush()
    del table
    again = evaluate_dataset(listing, model, out, workers=0)  # row 1 alone in its batch: float32 rounding differs
    assert again["top1"] == 100.0 and again["num_evaluated"] == 3
    np.testing.assert_allclose(np.load(out / "logits.npy"), logits, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("name", "content", "match"), [
    ("logits.npy", b"garbage", r"logits.npy: is not a logits file written by vivit evaluate"),
    ("run.json", b"{not json", r"run.json: is not valid JSON"),
    ("run.json", b"[1, 2]", r"run.json: holds a JSON list"),
    ("predictions.jsonl", b'{"index": 0, "status": "failed"}\n', r"predictions.jsonl:1: is not a prediction record"),
])
def test_a_damaged_output_file_is_refused_with_one_line_naming_it(clips, model, tmp_path, capsys, name, content,
                                                                  match):
    listing, out = _small(clips, tmp_path, 2), tmp_path / "out"
    args = ["evaluate", str(listing), "--out", str(out), *EVAL_ARGS]
    assert cli.main([*args, "--stop-after", "1"]) == cli.STOPPED_EXIT_CODE
    (out / name).write_bytes(content)
    capsys.readouterr()
    assert cli.main(args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vivit evaluate:")]
    assert len(errors) == 1 and str(out / name) in errors[0]
    with pytest.raises(ValueError, match=match):
        evaluate_dataset(listing, model, out, workers=0)


def test_an_extract_index_naming_shards_rank_0_lacks_is_refused(tmp_path):
    # Ranks on nodes that do not share the folder: each scanned its own shards, so the gathered results are complete,
    # but rank 0's folder lacks the shard another rank wrote; the index must not name a file that is not there.
    from types import SimpleNamespace

    from vivit.tasks.extract import _Extract

    task = _Extract(per_clip=False, layer=None, shard_size=1)
    task.shards = tmp_path / "shards"
    task.shards.mkdir()
    run = SimpleNamespace(num=1, out=tmp_path, rows=SimpleNamespace(paths=["a.mp4"], labels=[None]))
    merged = {0: {"shard": "features-001-00000.safetensors", "row": 0, "rows": 1, "dim": 4}}
    with pytest.raises(RuntimeError, match=r"lacks 1 shards other ranks wrote .*the ranks do not share"):
        task.finish(run, {}, merged)
    assert not (tmp_path / "index.json").exists()


def test_a_confusion_plot_that_fails_midway_leaves_no_file(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from vivit.tasks.evaluate import _plot_confusion

    def full_disk(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG, half of it")
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space"):
        _plot_confusion(tmp_path / "confusion.png", [("classes", ["a", "b"], np.eye(2, dtype=np.int64))])
    assert list(tmp_path.iterdir()) == []  # neither a half confusion.png nor a temporary file


def test_non_finite_outputs_fail_their_video_in_evaluate_and_extract(clips, model, tmp_path):
    import copy

    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.patch_embed.proj.weight.fill_(float("nan"))
    listing = _small(clips, tmp_path, 2)
    report = evaluate_dataset(listing, bad, tmp_path / "e", workers=0)
    assert (report["num_evaluated"], report["num_failed"], report["top1"]) == (0, 2, None)
    assert all("not finite" in f["reason"] for f in report["failed"])
    assert np.isnan(np.load(tmp_path / "e" / "logits.npy")).all()
    index = extract_features(listing, bad, tmp_path / "x", workers=0)
    assert index["num_extracted"] == 0 and all("not finite" in f["reason"] for f in index["failed"])


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                                "5368709120 bytes")])
def test_out_of_memory_stops_the_run_instead_of_failing_the_video(clips, model, tmp_path, monkeypatch, error):
    from vivit.data.video import ViewSampler
    from vivit.tasks.run import RunError

    def out_of_memory(self, path, **kwargs):
        raise error

    monkeypatch.setattr(ViewSampler, "__call__", out_of_memory)
    with pytest.raises(RunError, match=r"out of memory running .*lower --batch-size \(now 16\)"):
        evaluate_dataset(_small(clips, tmp_path, 1), model, tmp_path / "out", workers=0)
    assert (tmp_path / "out" / "predictions.jsonl").read_text() == ""  # not recorded as a bad video


def test_extract_shards_follow_the_umask_and_a_full_disk_is_one_line(clips, model, tmp_path, monkeypatch, capsys):
    import safetensors.torch
    from safetensors import SafetensorError

    listing = tmp_path / "files.txt"
    listing.write_text(f"{clips / 'static_0.mp4'}\n")
    umask = os.umask(0o027)
    try:
        extract_features(listing, model, tmp_path / "x", workers=0)
    finally:
        os.umask(umask)
    (shard,) = (tmp_path / "x" / "shards").glob("*.safetensors")
    assert shard.stat().st_mode & 0o777 == 0o640

    def full_disk(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    capsys.readouterr()
    assert cli.main(["extract", str(listing), "--out", str(tmp_path / "y"), *EVAL_ARGS]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("vivit extract:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err


def test_an_unlabelled_evaluation_prints_no_accuracy_of_none(clips, tmp_path, capsys):
    listing = tmp_path / "files.txt"
    listing.write_text(f"{clips / 'static_0.mp4'}\n")
    assert cli.main(["evaluate", str(listing), "--out", str(tmp_path / "o"), *EVAL_ARGS]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and out.startswith("no labels (predictions only) num_videos 1 num_evaluated 1")


def test_thousands_of_missing_files_print_a_bounded_summary(clips, tmp_path):
    listing = tmp_path / "mostly_missing.csv"
    listing.write_text("path,label\n" + f"{clips / 'static_0.mp4'},static\n"
                       + "".join(f"gone/{i}.mp4,static\n" for i in range(2000)))
    result = run_group([sys.executable, "-m", "vivit", "evaluate", str(listing), "--out", str(tmp_path / "o"),
                        *EVAL_ARGS], timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) < 60, "\n".join(lines[:80])
    assert "2000 of 2001 files do not exist" in result.stderr and "2000 of 2001 videos failed" in result.stderr
    assert _report(tmp_path / "o")["num_failed"] == 2000  # every one of them is in the report


def test_log_every_counts_videos_not_batches(caplog):
    import logging

    from vivit.progress import Progress

    progress = Progress(40, "evaluate", every=10, show=False, log=logging.getLogger("vivit.tasks.run"))
    with caplog.at_level("INFO", logger="vivit.tasks.run"):
        for _ in range(8):  # batches of 5 videos
            progress.update(5)
    done = [int(r.getMessage().split(": ")[1].split("/")[0]) for r in caplog.records]
    assert done == [10, 20, 30, 40]


def test_progress_without_a_total_counts_from_a_resume_and_says_where_it_is(caplog):
    import logging

    from vivit.progress import Progress

    progress = Progress(None, "timeline", unit="window", every=2, initial=5, show=False,
                        log=logging.getLogger("vivit.tasks.timeline"))
    with caplog.at_level("INFO", logger="vivit.tasks.timeline"):
        for _ in range(4):
            progress.update(note="video at 0:00:01.0")
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" windows")[0] for line in lines] == ["timeline: 7", "timeline: 9"]
    assert all(line.endswith("video at 0:00:01.0") and "ETA" not in line for line in lines)
    assert progress.close() > 0 and progress.new == 4


@pytest.mark.parametrize(("job", "name"), [("evaluate", "predictions.jsonl"), ("evaluate", "logits.npy"),
                                           ("extract", "index.json"),
                                           ("extract", "shards/features-000-00000.safetensors")])
def test_outputs_without_run_json_are_refused_with_one_line(clips, model, tmp_path, capsys, job, name):
    out = tmp_path / "out"
    (out / name).parent.mkdir(parents=True)
    (out / name).write_bytes(b"from an older vivit")
    listing = _small(clips, tmp_path, 1)
    assert cli.main([job, str(listing), "--out", str(out), *EVAL_ARGS]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"vivit {job}:")]
    assert len(errors) == 1 and str(out / name) in errors[0] and "without run.json" in errors[0]
    assert (out / name).read_bytes() == b"from an older vivit" and not (out / "run.json").exists()


def test_options_as_one_object_equal_the_keywords(clips, model, tmp_path):
    from vivit.tasks.run import RunOptions

    listing = _small(clips, tmp_path, 2)
    options = RunOptions(views="1x1", batch_size=2, workers=0)
    by_object = evaluate_dataset(listing, model, tmp_path / "o", options)
    by_keywords = evaluate_dataset(listing, model, tmp_path / "k", views="1x1", batch_size=2, workers=0)
    assert by_object == by_keywords and by_object["views"] == "1x1"
    with pytest.raises(TypeError, match="runtime"):  # the unreleased name of backend= is gone, not ignored
        evaluate_dataset(listing, model, tmp_path / "r", runtime="torch")


def test_a_resume_with_other_settings_is_refused_before_the_model_loads(clips, tmp_path, capsys):
    listing, out = _small(clips, tmp_path, 1), tmp_path / "out"
    assert cli.main(["evaluate", str(listing), "--out", str(out), *EVAL_ARGS, "--views", "1x1"]) == 0
    capsys.readouterr()
    # a model that cannot load: the settings are checked first, so the line names them, not the model
    args = ["evaluate", str(listing), "--out", str(out), "--model", str(tmp_path / "no-such-model"), "--dtype",
            "float32", "--decoder", "pyav"]
    assert cli.main([*args, "--views", "2x1"]) == 2  # the flags contradict the folder: bad usage
    err = capsys.readouterr().err
    assert "other settings" in err and "views was '1x1', now '2x1'" in err and "decoder" in err
    assert "cannot load" not in err


def test_layer_features_with_token_merging_are_bad_usage_before_loading(clips, model, tmp_path, capsys):
    listing = _small(clips, tmp_path, 1)
    args = ["extract", str(listing), "--out", str(tmp_path / "x"), *EVAL_ARGS]
    assert cli.main([*args, "--layer", "0", "--token-merging", "2"]) == 2
    assert "token merging" in capsys.readouterr().err and not (tmp_path / "x").exists()
    merged = copy.deepcopy(model)
    merged.set_token_merging(2)
    with pytest.raises(ValueError, match="token merging"):
        extract_features(listing, merged, tmp_path / "y", layer=0, workers=0)
    assert not (tmp_path / "y" / "run.json").exists()


@pytest.mark.parametrize("decoder", ["pyav", "torchcodec"])
def test_a_decoder_passed_as_backend_is_refused_naming_decoder(clips, model, tmp_path, decoder):
    with pytest.raises(ValueError, match=rf"decoder={decoder!r}"):
        evaluate_dataset(_small(clips, tmp_path, 1), model, tmp_path / "out", backend=decoder)
    with pytest.raises(ValueError, match=rf"decoder={decoder!r}"):
        extract_features(_small(clips, tmp_path, 1), model, tmp_path / "x", backend=decoder)
    assert not (tmp_path / "out").exists()


def test_backend_chooses_the_runtime_and_run_json_records_the_one_that_ran(clips, model, tmp_path):
    listing = _small(clips, tmp_path, 1)
    torch_run = evaluate_dataset(listing, model, tmp_path / "t", backend="torch", decoder="pyav", workers=0)
    auto_run = evaluate_dataset(listing, model, tmp_path / "a", backend="auto", workers=0)  # VIVIT_BACKEND=torch
    assert torch_run["top1"] == auto_run["top1"] == 100.0
    for out in ("t", "a"):  # "auto" is recorded as what it picked, so a resume on another machine cannot mix
        saved = json.loads((tmp_path / out / "run.json").read_text())
        assert (saved["backend"], saved["decoder"]) == ("torch", "pyav" if out == "t" else "auto")


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs vivit[openvino]")
def test_backend_openvino_runs_the_evaluation_through_openvino(clips, tmp_path):
    # OpenVINO in a process of its own (tests/tasks/test_optimize.py says why); vivit_motion converts in a few seconds.
    listing = _small(clips, tmp_path, 2)
    code = ("import json, sys; from vivit.tasks.evaluate import evaluate_dataset; "
            "r = evaluate_dataset(sys.argv[1], 'vivit_motion', sys.argv[2], backend='openvino', workers=0); "
            "print(json.dumps(r['top1']))")
    result = subprocess.run([sys.executable, "-c", code, str(listing), str(tmp_path / "o")], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                         "VIVIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == 100.0
    assert json.loads((tmp_path / "o" / "run.json").read_text())["backend"] == "openvino"
