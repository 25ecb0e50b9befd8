"""vivit.optimize's OpenVINO tests, in a pytest process of their own (see tests/conftest.py for why)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = ["tests/optimize_cases.py", "tests/test_timeline.py::test_the_cli_runs_the_chosen_backend_and_records_it",
         "tests/test_reuse.py::test_openvino_reuses_slices_with_the_spatial_half_converted_on_its_own"]


def test_openvino_cases_pass_in_their_own_process():
    pytest.importorskip("openvino", reason='OpenVINO is the extra vivit[openvino]: pip install "vivit[openvino]"')
    env = {k: v for k, v in os.environ.items() if k != "VIVIT_BACKEND"}
    env["VIVIT_TEST_OPENVINO"] = "1"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CASES], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout, out.stdout[-2000:]


def test_vivit_backend_pins_what_auto_picks(monkeypatch):
    """In-process, without OpenVINO: VIVIT_BACKEND=torch makes "auto" the torch path; a bad value is one clear error."""
    import torch

    from vivit.tasks.optimize import optimize

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 5))
    monkeypatch.setenv("VIVIT_BACKEND", "torch")
    run = optimize(model)
    assert run.backend == "torch"
    x = torch.randn(2, 3, 2, 4, 4)
    torch.testing.assert_close(run(x), model(x))
    monkeypatch.setenv("VIVIT_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="backend must be one of"):
        optimize(model)
