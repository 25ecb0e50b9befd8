"""examples/train.py end to end on CPU (gloo): a tiny ViViT on generated motion clips, launched with torchrun.

One uninterrupted 2-process DDP run is shared: its loss must go down, a run stopped after a mid-epoch checkpoint and
resumed must end with its weights, and a 2-rank FSDP2 run with gradient accumulation must reach them too.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("torchvision")
pytest.importorskip("timm")

from tests.processes import torchrun  # noqa: E402
from tests.videos import write_truncated  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "train.py"
TINY = '{"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64, "tubelet_size": [2, 8, 8]}'
# 26 training rows (24 clips, a truncated file, a missing one) / 2 ranks / batch 4 = 3 steps per epoch; 6 epochs.
# No flip: the classes are motion directions. Checkpoint at step 4 falls inside epoch 1. Stochastic depth draws from
# each rank's RNG, which a resumed run must restore.
ARGS = ["--model", "vivit_ti_16x2", "--model-args", TINY, "--num-frames", "8", "--img-size", "32",
        "--frame-stride", "1", "--batch-size", "4", "--epochs", "6", "--lr", "0.1", "--warmup-steps", "2",
        "--eval-views", "1x1", "--workers", "1", "--log-every", "1", "--checkpoint-every", "4", "--no-flip",
        "--color-augment", "0", "--drop-path", "0.1"]


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _torchrun(out: Path, data: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return torchrun(str(TRAIN), "--train", str(data / "train.csv"), "--val", str(data / "val.csv"), "--out", str(out),
                    *ARGS, *extra, nproc=nproc, timeout=180, env={"PYTHONPATH": str(ROOT)})


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def _check(result: subprocess.CompletedProcess, code: int = 0) -> None:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("motion")
    _load_example("make_motion_data").write_motion_dataset(root, 24, 8, num_classes=4, num_frames=12, size=32)
    classes = _classes(root)
    write_truncated(root / "videos" / "truncated.mp4", root / "videos" / "train_00000.mp4")
    (root / "videos" / "empty.mp4").write_bytes(b"")
    with open(root / "train.csv", "a") as f:
        f.write(f"videos/truncated.mp4,{classes[0]}\nvideos/gone.mp4,{classes[1]}\n")
    with open(root / "val.csv", "a") as f:
        f.write(f"videos/empty.mp4,{classes[2]}\n")
    return root


def _classes(root: Path) -> list[str]:
    return (root / "classes.txt").read_text().split()


@pytest.fixture(scope="module")
def ddp_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    _check(_torchrun(out, data))
    return out


def test_two_process_ddp_run_finishes_and_its_loss_goes_down(data, ddp_run):
    epochs = _rows(ddp_run / "epochs.csv")
    assert [int(r["epoch"]) for r in epochs] == list(range(6))
    losses = [float(r["train_loss"]) for r in epochs]
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(0 <= float(r["top1"]) <= float(r["top5"]) <= 100 for r in epochs)
    assert [int(r["step"]) for r in _rows(ddp_run / "steps.csv")] == list(range(1, 19))

    import vivit

    model = vivit.create_model(f"local-dir:{ddp_run / 'model'}", pretrained=True)
    assert model.num_classes == 4 and model.pretrained_cfg["frame_stride"] == 1
    assert (ddp_run / "model" / "README.md").exists()
    assert _classes(ddp_run) == sorted(_classes(data))


def test_unreadable_videos_are_skipped_and_counted_not_fatal(ddp_run):
    epochs = _rows(ddp_run / "epochs.csv")
    assert all(int(r["train_skipped"]) >= 1 for r in epochs)  # the truncated and the missing file, when drawn
    assert all(int(r["val_skipped"]) == 1 and int(r["val_videos"]) == 8 for r in epochs)


def test_run_stopped_after_a_checkpoint_and_resumed_ends_with_the_same_weights(data, ddp_run, tmp_path):
    stopped = _torchrun(tmp_path, data, "--stop-after-steps", "5")
    assert stopped.returncode != 0 and "stopping after step 5" in stopped.stderr, stopped.stderr[-3000:]
    assert not (tmp_path / "model").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000003.pt", "step_00000004.pt"]
    _check(_torchrun(tmp_path, data, "--resume", str(tmp_path)))  # picks step 4, inside epoch 1

    reference, resumed = _weights(ddp_run), _weights(tmp_path)
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=1e-6, rtol=0, msg=key)
    for log, column in (("steps.csv", "loss"), ("epochs.csv", "train_loss"), ("epochs.csv", "top1")):
        assert [r[column] for r in _rows(tmp_path / log)] == [r[column] for r in _rows(ddp_run / log)], log


def test_fsdp_on_two_gloo_ranks_trains_like_ddp(data, ddp_run, tmp_path):
    if not hasattr(torch.distributed, "is_available") or not torch.distributed.is_available():
        pytest.skip("torch was built without torch.distributed")
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip(f"torch {torch.__version__} has no FSDP2 (torch.distributed.fsdp.fully_shard)")
    result = _torchrun(tmp_path, data, "--fsdp", "--grad-checkpointing")
    _check(result)
    reference, sharded = _weights(ddp_run), _weights(tmp_path)
    for key in reference:
        torch.testing.assert_close(sharded[key], reference[key], atol=1e-4, rtol=1e-4, msg=key)
    epochs = _rows(tmp_path / "epochs.csv")
    assert all(int(r["val_videos"]) == 8 for r in epochs)  # 9 rows over 2 ranks: one pad, one unreadable


@pytest.fixture(scope="module")
def train_module():
    return _load_example("train")


def test_gradient_accumulation_matches_one_larger_batch(train_module, data, tmp_path):
    def run(out: Path, *extra: str) -> dict[str, torch.Tensor]:
        argv = ["--train", str(data / "train.csv"), "--out", str(out), *ARGS, "--epochs", "1", "--workers", "0",
                "--drop-path", "0", "--checkpoint-every", "0", *extra]
        assert train_module.main(argv) == 0
        return _weights(out)

    whole, accumulated = run(tmp_path / "whole"), run(tmp_path / "accum", "--batch-size", "2", "--accum-steps", "2")
    for key in whole:
        torch.testing.assert_close(accumulated[key], whole[key], atol=1e-5, rtol=1e-5, msg=key)


class _FakeWriter:
    """Stands in for TensorBoard's SummaryWriter (which may not be installed), recording what it is given."""

    made: list[_FakeWriter] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.purge_step, self.scalars = purge_step, []
        _FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, step))

    def close(self) -> None:
        pass


def test_resume_refuses_other_optimisation_settings_and_logs_the_lr_it_uses(train_module, data, tmp_path,
                                                                           monkeypatch):
    tensorboard = types.ModuleType("torch.utils.tensorboard")
    tensorboard.SummaryWriter = _FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tensorboard)
    monkeypatch.setattr(_FakeWriter, "made", [])
    out = tmp_path / "run"
    # 26 rows / batch 4 = 6 steps in the one epoch, warm-up 2 steps; checkpoint at step 1, then stop
    argv = ["--train", str(data / "train.csv"), "--out", str(out), *ARGS, "--epochs", "1", "--workers", "0",
            "--checkpoint-every", "1"]
    assert train_module.main([*argv, "--stop-after-steps", "1"]) == train_module.STOPPED_EXIT_CODE
    args_json = (out / "args.json").read_text()
    for flags, message in ((["--lr", "0.2"], "--lr was 0.1, now 0.2"),
                           (["--optimizer", "adamw"], "--optimizer was 'sgd', now 'adamw'"),
                           (["--warmup-steps", "3"], "--warmup-steps was 2, now 3"),
                           (["--label-smoothing", "0.1"], "--label-smoothing was 0.0, now 0.1"),
                           (["--frame-stride", "2"], "--frame-stride was 1, now 2")):
        with pytest.raises(ValueError, match=message):
            train_module.main([*argv, *flags, "--resume", str(out)])
    assert (out / "args.json").read_text() == args_json  # a refused resume writes nothing

    assert train_module.main([*argv, "--resume", str(out)]) == 0
    lrs = [float(r["lr"]) for r in _rows(out / "steps.csv")]
    expected = [0.1 * train_module.lr_factor(step, 2, 6) for step in range(6)]
    assert lrs == pytest.approx(expected, rel=1e-5, abs=1e-9)
    first, resumed = _FakeWriter.made[0], _FakeWriter.made[-1]
    assert first.purge_step is None and resumed.purge_step == 2  # drops what the stopped run logged after step 1
    assert {step for _, step in resumed.scalars} == set(range(2, 7))  # epoch scalars too are logged by step


def test_recipe_defaults_are_resolved_before_args_json_is_written(train_module):
    def resolve(*flags: str):
        return train_module.resolve_args(train_module.make_parser().parse_args(["--train", "t", "--out", "o",
                                                                                *flags]))

    kinetics, epic = resolve(), resolve("--recipe", "epic_kitchens")
    assert (kinetics.frame_stride, kinetics.eval_views, kinetics.label_smoothing) == (2, "4x3", 0.0)
    # scenic epic_kitchens/vivit_large_factorised_encoder.py: stride 1, label_smoothing 0.2, mixup 0.1, droplayer 0.2
    assert (epic.frame_stride, epic.eval_views, epic.label_smoothing, epic.mixup, epic.drop_path) == (1, "4x1", 0.2,
                                                                                                     0.1, 0.2)
    assert resolve("--frame-stride", "3", "--eval-views", "2x3").frame_stride == 3
    with pytest.raises(train_module.DataError, match="--eval-views"):
        resolve("--eval-views", "4x2")
    with pytest.raises(train_module.DataError, match="--frame-stride must be >= 1"):
        resolve("--frame-stride", "0")


def test_unknown_label_stops_the_run_before_training(train_module, data, tmp_path, capsys):
    bad = tmp_path / "val.csv"
    first = _classes(data)[0]
    bad.write_text(f"path,label\n{data / 'videos' / 'val_00000.mp4'},{first}x\n")
    with pytest.raises(SystemExit) as exit_info:
        train_module.main(["--train", str(data / "train.csv"), "--val", str(bad), "--out", str(tmp_path / "o"),
                           *ARGS])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"val.csv:2: '{first}x'" in err and f"did you mean '{first}'" in err
    assert not (tmp_path / "o").exists()


def test_labels_outside_the_classes_file_are_refused(train_module, data, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(_classes(data)[:2]) + "\n")
    paths, labels, where = train_module.read_listing(data / "train.csv")
    with pytest.raises(train_module.DataError, match="not known classes"):
        train_module.to_items(paths, labels, where, train_module.resolve_classes(labels, classes), "--train")


def test_folder_per_class_tree_lists_videos_with_their_folder_labels(train_module, tmp_path):
    for name in ("b_class", "a_class"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "clip.mp4").write_bytes(b"x")
        (tmp_path / name / "notes.txt").write_text("not a video")
    paths, labels, _ = train_module.read_listing(tmp_path)
    assert labels == ["a_class", "b_class"] and all(p.endswith("clip.mp4") for p in paths)
    with pytest.raises(train_module.DataError, match="no such file or folder"):
        train_module.read_listing(tmp_path / "nothing.csv")


def test_lr_schedule_is_the_reference_linear_warmup_then_cosine(train_module):
    f = train_module.lr_factor
    assert f(0, 10, 100) == 0.0 and f(5, 10, 100) == pytest.approx(0.5)  # scenic: the first update has lr 0
    assert f(10, 10, 100) == pytest.approx(1.0) and f(55, 10, 100) == pytest.approx(0.5)
    assert f(100, 10, 100) == pytest.approx(0.0, abs=1e-12) and f(0, 0, 100) == 1.0


def test_make_motion_data_writes_a_validation_only_dataset(tmp_path):
    # `python examples/make_motion_data.py data/motion --train 0 --val 120`, smaller: no training clip at all.
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "make_motion_data.py"), str(tmp_path / "m"),
                             "--train", "0", "--val", "3", "--classes", "2"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _check(result)
    assert (tmp_path / "m" / "train.csv").read_text().splitlines() == ["path,label"]
    assert len((tmp_path / "m" / "val.csv").read_text().splitlines()) == 1 + 3
