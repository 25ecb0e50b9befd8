"""vivit.data.datasets: listing forms, class maps, the evaluation dataset's failure records, collation, sharding."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vivit.data.datasets import (
    KINETICS_PATTERN,
    UNLABELLED,
    DataError,
    EvalVideos,
    Item,
    collate_views,
    make_loader,
    read_listing,
    resolve_classes,
    shard,
    to_items,
)

ROOT = Path(__file__).resolve().parents[2]


def test_kinetics_csv_rows_map_onto_the_documented_file_names(tmp_path):
    videos = tmp_path / "val"
    videos.mkdir()
    (videos / "abc_000014_000024.mp4").write_bytes(b"x")
    (videos / "def_000001_000011.mkv").write_bytes(b"x")  # another suffix, same stem: found too
    csv = tmp_path / "validate.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n\"air drumming\",abc,14,24,validate\n"
                   "abseiling,def,1,11,validate\nabseiling,gone,3,13,validate\n")
    listing = read_listing(csv, video_root=videos)
    assert [Path(p).name for p in listing.paths] == ["abc_000014_000024.mp4", "def_000001_000011.mkv",
                                                      "gone_000003_000013.mp4"]
    assert listing.labels == ["air drumming", "abseiling", "abseiling"] and listing.where[0] == f"{csv}:2"
    assert KINETICS_PATTERN == "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
    other = read_listing(csv, video_root=videos, pattern="{label}/{youtube_id}.mp4")
    assert other.paths[0] == str(videos / "air drumming" / "abc.mp4")
    with pytest.raises(DataError, match=r"validate.csv:2: cannot build a file name from pattern '\{nope\}'"):
        read_listing(csv, pattern="{nope}")


def test_kinetics_test_csv_without_a_label_column_is_unlabelled(tmp_path):
    csv = tmp_path / "test.csv"
    csv.write_text("youtube_id,time_start,time_end,split\nabc,10,20,test\n")
    listing = read_listing(csv)
    assert [Path(p).name for p in listing.paths] == ["abc_000010_000020.mp4"] and listing.labels == [None]


def test_a_bare_list_keeps_commas_in_paths(tmp_path):
    (tmp_path / "files.txt").write_text("a,b.mp4\nc.mp4\n")
    listing = read_listing(tmp_path / "files.txt")
    assert listing.paths == [str(tmp_path / "a,b.mp4"), str(tmp_path / "c.mp4")] and listing.labels == [None, None]


def test_csv_header_is_optional_and_a_bare_list_is_unlabelled(tmp_path):
    (tmp_path / "a.csv").write_text("# comment\nclips/1.mp4,cat\n/abs/2.mp4,dog\n")
    listing = read_listing(tmp_path / "a.csv")
    assert listing.paths == [str(tmp_path / "clips" / "1.mp4"), "/abs/2.mp4"] and listing.labels == ["cat", "dog"]
    (tmp_path / "files.txt").write_text("1.mp4\n2.mp4\n")
    (tmp_path / "paths.csv").write_text("path\n1.mp4\n")
    assert read_listing(tmp_path / "files.txt").labels == [None, None]
    assert read_listing(tmp_path / "paths.csv").labels == [None]
    (tmp_path / "short.csv").write_text("path,label\n1.mp4\n")
    with pytest.raises(DataError, match=r"short.csv:2: expected 'path,label', found '1.mp4'"):
        read_listing(tmp_path / "short.csv")
    (tmp_path / "empty.csv").write_text("# nothing\n")
    with pytest.raises(DataError, match="has no rows"):
        read_listing(tmp_path / "empty.csv")


def test_class_maps_match_spellings_and_refuse_unknown_or_missing_labels(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"x")
    path = str(tmp_path / "v.mp4")
    classes = ["air drumming", "abseiling"]
    items = to_items([path] * 3, ["air_drumming", "Abseiling", None], ["r1", "r2", "r3"], classes, "t")
    assert [i.label for i in items] == [0, 1, UNLABELLED]
    assert to_items([path], ["1"], ["r"], classes, "t", allow_indices=True) == [Item(path, 1)]
    with pytest.raises(DataError, match=r"r: 'air drums' \(did you mean 'air drumming'\?\)"):
        to_items([path], ["air drums"], ["r"], classes, "t")
    with pytest.raises(DataError, match="r3: has no label"):
        to_items([path] * 3, ["abseiling", "abseiling", None], ["r1", "r2", "r3"], classes, "t", require_labels=True)
    with pytest.raises(DataError, match="none of the 1 listed files exists"):
        to_items([str(tmp_path / "gone.mp4")], ["abseiling"], ["r"], classes, "t")
    assert resolve_classes(["10", "2", None, "2"]) == ["2", "10"]


def test_eval_videos_turn_unreadable_files_into_failure_records(tmp_path):
    from vivit.data.video import write_video

    rng = np.random.default_rng(0)
    write_video(tmp_path / "ok.mp4", rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), fps=4)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    cfg = {"input_size": (3, 4, 16, 16), "frame_stride": 1, "crop_pct": 1.0}
    ds = EvalVideos([Item(str(tmp_path / "ok.mp4"), 0), Item(str(tmp_path / "bad.mp4"), 1),
                     Item(str(tmp_path / "gone.mp4"), 2)], cfg, "2x1", pad_to=2)
    assert len(ds) == 4 and ds[3]["status"] == "pad"
    batch = collate_views([ds[i] for i in range(4)])
    assert batch["views"].shape == (2, 3, 4, 16, 16) and batch["counts"] == [2, 0, 0, 0]
    ok, bad, gone, _ = batch["records"]
    assert ok["status"] == "ok" and ok["error"] is None
    assert bad["status"] == "failed" and "FFmpeg cannot read it" in bad["error"] and str(tmp_path) not in bad["error"]
    assert gone["status"] == "failed" and "no such file" in gone["error"]
    # the same through worker processes: failures come back as records, the loader does not stop
    statuses = [r["status"] for b in make_loader(ds, batch_size=2, workers=1, collate_fn=collate_views)
                for r in b["records"]]
    assert statuses == ["ok", "failed", "failed", "pad"]


def test_shards_are_disjoint_and_cover_the_listing():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and [len(p) for p in parts] == [4, 4, 3]
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\)"):
        shard(items, 3, 3)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        make_loader(torch.utils.data.TensorDataset(torch.zeros(2)), workers=-1)


# ------------------------------------------------------------------------------------------------ hostile listings
def test_a_csv_path_starting_with_a_hash_is_a_row_and_a_lone_hash_field_a_comment(tmp_path):
    (tmp_path / "a.csv").write_text("path,label\n#1.mp4,cat\n# a comment\n2.mp4,dog\n")
    listing = read_listing(tmp_path / "a.csv")
    assert listing.paths == [str(tmp_path / "#1.mp4"), str(tmp_path / "2.mp4")] and listing.labels == ["cat", "dog"]
    (tmp_path / "#3.mp4").write_bytes(b"x")  # a one-field line that names a file is a row too
    (tmp_path / "files.txt").write_text("#3.mp4\n# not a file\n")
    assert read_listing(tmp_path / "files.txt").paths == [str(tmp_path / "#3.mp4")]


def test_a_byte_order_mark_does_not_turn_the_header_into_a_row(tmp_path):
    (tmp_path / "excel.csv").write_bytes("\ufeffpath,label\nclip.mp4,cat\n".encode())
    listing = read_listing(tmp_path / "excel.csv")
    assert listing.paths == [str(tmp_path / "clip.mp4")] and listing.labels == ["cat"]
    (tmp_path / "k.csv").write_bytes("\ufefflabel,youtube_id,time_start,time_end,split\ncat,abc,1,11,val\n".encode())
    assert read_listing(tmp_path / "k.csv").labels == ["cat"]  # a Kinetics header is recognised behind a BOM


def test_a_leading_space_that_is_part_of_a_file_name_is_kept(tmp_path):
    (tmp_path / " lead.mp4").write_bytes(b"x")
    (tmp_path / "a.csv").write_text("path,label\n lead.mp4,cat\n other.mp4 , dog\n")
    assert read_listing(tmp_path / "a.csv").paths == [str(tmp_path / " lead.mp4"), str(tmp_path / "other.mp4")]


def test_a_listing_that_is_not_utf8_is_refused_naming_it(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("path,label\nété.mp4,cat\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv: is not UTF-8 text \(byte 0xe9 at offset 11\)"):
        read_listing(tmp_path / "latin1.csv")


def test_a_tree_with_a_cycle_and_odd_links_lists_each_video_once_and_reports_the_links(tmp_path, caplog):
    root = tmp_path / "tree"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "x.mp4").write_bytes(b"x")
    (root / "dog").mkdir()
    (root / "dog" / "y.mp4").write_bytes(b"y")
    (root / "loop").symlink_to(root, target_is_directory=True)  # a class folder that is the tree itself
    (root / "dog" / "again").symlink_to(root / "dog", target_is_directory=True)  # a cycle inside a class
    (root / "cat" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")  # dangling
    (root / "cat" / "null.mp4").symlink_to("/dev/null")  # a device
    (root / "twin").mkdir()
    (root / "twin" / "x.mp4").symlink_to(root / "cat" / "x.mp4")
    with caplog.at_level("WARNING"):
        listing = read_listing(root)
    assert [Path(p).relative_to(root).as_posix() for p in listing.paths] == [
        "cat/gone.mp4", "cat/null.mp4", "cat/x.mp4", "dog/y.mp4"]
    assert listing.labels == ["cat", "cat", "cat", "dog"]
    text = caplog.text
    assert "a cycle" in text and "reached twice" in text and "2 listed entries are links that point nowhere" in text


# ------------------------------------------------------------------------------------------------ hung decoding workers
class _Hangs(torch.utils.data.Dataset):
    """A dataset whose decode never returns: it writes its worker's pid to ``pid_file`` first."""

    def __init__(self, pid_file: str) -> None:
        self.pid_file = pid_file

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        import os
        import time

        with open(self.pid_file, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(10**6)
        return i


def test_a_hung_worker_is_one_clear_error_after_the_loader_deadline(tmp_path, monkeypatch):
    from vivit.data.datasets import LoaderTimeout, loader_timeout

    loader = make_loader(_Hangs(str(tmp_path / "pid")), workers=1, timeout=1)
    with pytest.raises(LoaderTimeout, match=r"sent no batch for 1 s .*VIVIT_LOADER_TIMEOUT"):
        next(iter(loader))
    monkeypatch.setenv("VIVIT_LOADER_TIMEOUT", "2.5")
    assert loader_timeout() == 2.5 and make_loader(_Hangs(str(tmp_path / "pid")), workers=1).timeout == 2.5
    for bad in ("nan", "-1", "inf", "soon"):
        monkeypatch.setenv("VIVIT_LOADER_TIMEOUT", bad)
        with pytest.raises(ValueError, match="VIVIT_LOADER_TIMEOUT must be a number of seconds"):
            loader_timeout()


ORPHAN = """
import sys
sys.path.insert(0, {tests!r})
from data.test_data import _Hangs
from vivit.data.datasets import make_loader
next(iter(make_loader(_Hangs({pid_file!r}), workers=1)))
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped has died)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_a_worker_stuck_in_a_decode_dies_with_its_parent(tmp_path):
    """A killed job (SIGKILL: no clean-up runs) leaves no decoding worker behind (one lived 8 minutes)."""
    pid_file = tmp_path / "pid"
    code = ORPHAN.format(tests=str(Path(__file__).parents[1]), pid_file=str(pid_file))
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)})
    worker = None
    try:
        for _ in range(600):  # the worker starts once torch is imported: a generous bound, polled
            if pid_file.exists() and pid_file.read_text():
                worker = int(pid_file.read_text())
                break
            time.sleep(0.2)
        assert worker is not None and parent.poll() is None, "the loader's worker never started"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=60)
        for _ in range(300):
            if not _running(worker):
                break
            time.sleep(0.2)
        assert not _running(worker), f"worker {worker} outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker is not None and _running(worker):
            os.kill(worker, signal.SIGKILL)
