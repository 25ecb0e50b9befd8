"""Label names shipped as package data: counts, order, provenance headers, and that they reach a built wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from vivit.labels import LABEL_SETS, label_names

REPO = Path(__file__).resolve().parents[1]
LABEL_FILES = ("kinetics400.txt", "kinetics600.txt", "epic_kitchens100_nouns.txt", "epic_kitchens100_verbs.txt",
               "motion.txt")
COUNTS = {"kinetics400": 400, "kinetics600": 600, "epic_kitchens100_nouns": 300, "epic_kitchens100_verbs": 97,
          "epic_kitchens100": 397, "motion": 10}


@pytest.mark.parametrize("label_set", sorted(COUNTS))
def test_counts_no_duplicates_no_blanks(label_set: str):
    names = label_names(label_set)
    assert len(names) == COUNTS[label_set]
    if label_set == "epic_kitchens100":  # a word can be both a noun and a verb class: unique within each split
        assert len(set(names[:300])) == 300 and len(set(names[300:])) == 97
        assert set(names[:300]) & set(names[300:]) == {"brush", "drink", "filter", "roll", "water", "wrap"}
    else:
        assert len(set(names)) == len(names)
    assert all(name and name == name.strip() and not name.startswith("#") for name in names)


def test_every_label_set_is_tested():
    assert set(LABEL_SETS) == set(COUNTS)


def test_motion_labels_are_the_generator_classes():
    from vivit.data.synthetic import MOTION_CLASSES

    assert label_names("motion") == list(MOTION_CLASSES)


def test_kinetics400_equals_torchvision():
    meta = pytest.importorskip("torchvision.models._meta")
    assert label_names("kinetics400") == list(meta._KINETICS400_CATEGORIES)


def test_kinetics_order_and_spot_checks():
    k400, k600 = label_names("kinetics400"), label_names("kinetics600")
    assert k400 == sorted(k400) and k600 == sorted(k600)
    assert (k400[0], k400[-1]) == ("abseiling", "zumba")
    assert (k600[0], k600[1], k600[-1]) == ("abseiling", "acting in play", "zumba")
    assert {"acting in play", "adjusting glasses", "backflip (human)"} <= set(k600) - set(k400)
    assert "dyeing hair" in k600 and "dying hair" in k400  # K600 renamed some K400 classes


def test_epic_kitchens_class_id_order():
    nouns, verbs = label_names("epic_kitchens100_nouns"), label_names("epic_kitchens100_verbs")
    # ids from the annotation repo's CSVs (and the examples in its README: noun 222 'label', verb 79 'let-go')
    assert nouns[:3] == ["tap", "spoon", "plate"] and nouns[222] == "label"
    assert verbs[:3] == ["take", "put", "wash"] and verbs[79] == "let-go"
    assert label_names("epic_kitchens100") == nouns + verbs  # scenic class_splits [300, 97]


def test_unknown_label_set_lists_known_ones():
    with pytest.raises(ValueError, match="kinetics400.*kinetics600.*epic_kitchens100"):
        label_names("kinetics700")


def test_returns_a_fresh_list():
    label_names("kinetics400").clear()
    assert len(label_names("kinetics400")) == 400


@pytest.mark.parametrize("file_name", LABEL_FILES)
def test_files_found_by_importlib_resources_with_provenance_header(file_name: str):
    resource = resources.files("vivit.labels").joinpath(file_name)
    assert resource.is_file()
    header = [line for line in resource.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert any("Source:" in line for line in header)
    assert all(line.startswith("# ") for line in header)


@pytest.mark.skipif(not (REPO / "pyproject.toml").is_file(), reason="needs the source checkout")
def test_built_wheel_contains_label_files(tmp_path: Path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(REPO / "vivit", src / "vivit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, src / name)
    out = tmp_path / "dist"
    code = f"import setuptools.build_meta as b; print(b.build_wheel({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = out / proc.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
        metadata = zf.read(next(n for n in shipped if n.endswith(".dist-info/METADATA"))).decode()
    assert "vivit/py.typed" in shipped, "the PEP 561 marker vivit/py.typed is not in the wheel"
    core = {line.split(":", 1)[1].split(">")[0].split(";")[0].strip() for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert {"timm", "torchvision"} <= core, f"timm-style backbones need timm and torchvision as core deps, got {core}"
    missing = [f for f in LABEL_FILES if f"vivit/labels/{f}" not in shipped]
    assert not missing, f"{missing} not in the wheel: add [tool.setuptools.package-data] 'vivit.labels' = ['*.txt']"


def test_missing_file_is_a_clear_error():
    from vivit.labels import _read_names

    with pytest.raises(FileNotFoundError, match="package data"):
        _read_names.__wrapped__("no_such_labels.txt")
