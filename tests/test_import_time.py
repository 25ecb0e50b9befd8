"""Start-up: what ``import vivit`` and the ``vivit`` command import (modules counted, not seconds timed).

``import vivit`` loads torch and vivit's own modules, never timm, torchvision or an optional dependency; vivit's
architectures join timm's registry when timm is imported. The ``vivit`` command's parser and its usage errors import
no torch. ``benchmarks/startup.py`` measures the seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("timm", "torchvision", "transformers", "openvino", "matplotlib", "av", "torchcodec", "msgpack")


def _python(code: str, *argv: str, path: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((*path, str(ROOT)))}
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)


def test_import_vivit_imports_no_timm_torchvision_or_optional_dependency_and_timm_still_sees_the_models():
    code = ("import sys, vivit\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
            "import timm, torch\n"
            "model = timm.create_model('vivit_s_16x2_fsa', num_classes=2, depth=1, temporal_depth=1, img_size=32, "
            "num_frames=4)\n"
            "print(type(model).__name__, tuple(model(torch.randn(1, 3, 4, 32, 32)).shape))\n"
            "print(len(timm.list_models('vivit_*')) == len(vivit.list_models()), type(timm.__loader__).__name__)\n"
            "from vivit import after_import\n"
            "print(sorted(after_import._pending))\n")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "ViViT (1, 2)", "True SourceFileLoader",
                                         str(sorted(["transformers.models.auto.configuration_auto",
                                                     "transformers.models.auto.modeling_auto"]))]


def test_timm_imported_before_vivit_sees_the_models_at_once():
    out = _python("import timm, vivit; print(len(timm.list_models('vivit_*')) == len(vivit.list_models()))")
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_a_broken_torchvision_does_not_break_vivit(tmp_path):
    # A CPU torch paired with a CUDA torchvision fails on import with this error; vivit uses none of its operators.
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    code = ("import torch, vivit\n"
            "model = vivit.create_model('vivit_motion').eval()\n"
            "with torch.no_grad():\n"
            "    print(tuple(model(torch.randn(1, 3, 16, 32, 32)).shape))\n"
            "try:\n    import timm\nexcept RuntimeError as err:\n    print('timm:', err)\n")
    out = _python(code, path=(str(tmp_path),))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["(1, 10)", "timm: operator torchvision::nms does not exist"]


def test_vivit_help_and_bad_usage_import_no_torch():
    # What the `vivit` console script runs (sys.argv[0] is the script); exit 0 for --help, 2 for bad usage.
    script = ("import sys\nsys.argv = ['vivit', *sys.argv[1:]]\nfrom vivit.cli import main\n"
              "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as stop:\n    code = stop.code\n"
              "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'timm'}), code)\n")
    for argv, code in ((["--help"], 0), (["classify", "--help"], 0), (["timeline", "--help"], 0), (["frobnicate"], 2),
                       (["classify"], 2), (["evaluate", "--bogus"], 2)):
        out = _python(script, *argv)
        assert out.stdout.splitlines()[-1] == f"HEAVY [] {code}", (argv, out.stdout + out.stderr)
    timed = subprocess.run([sys.executable, "-X", "importtime", "-m", "vivit", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert timed.returncode == 0 and not [line for line in timed.stderr.splitlines()
                                          if line.rstrip().endswith(("| torch", "| timm", "| numpy"))]
