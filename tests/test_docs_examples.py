"""Every ```python block in README.md and docs/ runs (blocks of one page share a namespace, in order), and every
``vivit.x.y`` path the pages name exists after ``import vivit``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# vivit.tasks.predict.predict_video, not vivit/model.py, google/vivit-b-16x2, "vivit.onnx" (a file name in a string)
API_PATH = re.compile(r"(?<![\w/.\-'\"])vivit(?:\.[A-Za-z_]\w*)+")


def _pages_with_code() -> list[Path]:
    return [p for p in PAGES if BLOCK.search(p.read_text())]


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files
    monkeypatch.setenv("VIVIT_OFFLINE", "1")  # and must never need the network
    monkeypatch.delenv("VIVIT_BACKEND", raising=False)  # as a user runs them: "auto" is the fastest installed
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(BLOCK.findall(page.read_text())):
        exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)  # noqa: S102 - our own docs


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_api_path_named_resolves_after_import_vivit(page):
    import vivit

    missing = []
    for path in sorted(set(API_PATH.findall(page.read_text()))):
        obj = vivit
        for part in path.split(".")[1:]:
            if not hasattr(obj, part):
                missing.append(path)
                break
            obj = getattr(obj, part)
    assert not missing, f"{page.name} names {missing}, which `import vivit` does not reach"
