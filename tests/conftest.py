"""Shared fixtures: the golden vectors beside the checkout and tiny model overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# "auto" (the CLI's and vivit.optimize's default) means the torch path in tests that compare files or outputs with
# float32 torch; the OpenVINO tests ask for it by name, or lift this pin (tests/tasks/test_optimize.py).
os.environ.setdefault("VIVIT_BACKEND", "torch")

GOLDEN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
# Keeps every variant's structure and widths, shrinks depth and the token grid (STYLE "every-model test").
TINY = dict(depth=1, temporal_depth=1, img_size=32, num_frames=4)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """``../shared/golden``; skipped with a reason when absent, an error under CI (CI always has it)."""
    if not GOLDEN_DIR.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"golden vectors missing at {GOLDEN_DIR}; CI must run with ../shared beside the checkout")
        pytest.skip(f"golden vectors not found at {GOLDEN_DIR} (clone with ../shared beside the checkout)")
    return GOLDEN_DIR


@pytest.fixture(scope="session", autouse=True)
def _vivit_cache(tmp_path_factory) -> None:
    """Caches written by the tests (vivit.optimize's converted models) go to a temporary folder, not the user's."""
    if "VIVIT_CACHE" not in os.environ:
        os.environ["VIVIT_CACHE"] = str(tmp_path_factory.mktemp("vivit_cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
