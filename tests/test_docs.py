"""Generated documentation stays in sync with the registry."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_models_table_is_generated_from_the_registry():
    spec = importlib.util.spec_from_file_location("flops", ROOT / "benchmarks" / "flops.py")
    flops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flops)
    assert (ROOT / "docs" / "models.md").read_text() == flops.table(), (
        "docs/models.md is stale: run python benchmarks/flops.py --write docs/models.md")


def test_paper_compute_is_reproduced_within_one_percent():
    spec = importlib.util.spec_from_file_location("flops", ROOT / "benchmarks" / "flops.py")
    flops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flops)
    # the paper's Table 2 to its one decimal: a figure that quotes the paper quotes it exactly
    assert flops.PAPER_GFLOPS == {"vivit_b_16x2": 455.2, "vivit_b_16x2_fe": 284.4, "vivit_b_16x2_fsa": 372.3,
                                  "vivit_b_16x2_fdp": 277.1}
    for name, gflops in flops.PAPER_GFLOPS.items():
        params, gmacs = flops.count(name)
        assert abs(gmacs - gflops) / gflops < 0.01, (name, gmacs)
        assert abs(params - flops.PAPER_PARAMS_M[name]) / flops.PAPER_PARAMS_M[name] < 0.005, (name, params)


def test_figures_are_generated_by_the_script(tmp_path):
    pytest = __import__("pytest")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "docs" / "make_figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    written = figures.main(tmp_path)
    assert [p.name for p in written] == ["token_grouping.png", "attention_motion.png", "compute.png",
                                         "timeline_motion.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    assert all((ROOT / "docs" / "images" / p.name).is_file() for p in written)  # the committed copies exist


def test_site_does_not_link_to_another_projects_repository():
    # vivit has no public repository URL yet; a repo_url would put another project's "edit" links on every page.
    lines = (ROOT / "mkdocs.yml").read_text().splitlines()
    assert not [line for line in lines if line.startswith(("repo_url", "edit_uri"))]


def test_recipe_outputs_are_git_ignored(tmp_path):
    import re
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest = __import__("pytest")
        pytest.skip("needs git and the source checkout")
    readme = (ROOT / "README.md").read_text()
    outputs = set(re.findall(r"(?:make_motion_data\.py|--out) ((?:data|runs)/\S+)", readme))
    assert {o.split("/")[0] for o in outputs} == {"data", "runs"}, outputs  # the README's recipe still writes these
    probes = [f"{o}/train.csv" for o in sorted(outputs)]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *probes], cwd=ROOT, capture_output=True, text=True)
    assert sorted(ignored.stdout.split()) == probes, f"not git-ignored: {set(probes) - set(ignored.stdout.split())}"


def test_readme_quick_start_and_test_set_up_are_one_line_each():
    import re

    readme = (ROOT / "README.md").read_text()
    quick = re.search(r"## Quick start\n.*?```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(quick) == 1 and quick[0].startswith("python3 -m venv .venv && ") and quick[0].endswith("vivit demo")
    assert " pip install" not in quick[0], "a bare pip targets the system Python, which Debian/Ubuntu refuse"
    dev = re.search(r"## Development\n.*?```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert dev == ["bash .ci/run"], "the README's test line is what CI runs"


def test_models_table_shows_no_model_at_zero_compute():
    rows = [line.split("|") for line in (ROOT / "docs" / "models.md").read_text().splitlines()
            if line.startswith("| `")]
    assert rows and all(float(row[4]) > 0 and float(row[5]) > 0 for row in rows), "a params or GMACs cell prints as 0"


def test_token_grouping_figure_draws_model_2_time_over_frame_tokens_not_positions():
    pytest = __import__("pytest")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "docs" / "make_figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    import numpy as np

    def time_cells(grid):
        return int(np.all(grid == figures.TIME, axis=-1).sum())

    model_2, cls_2 = figures._colours("Model 2: factorised encoder")
    model_3, cls_3 = figures._colours("Model 3: factorised self-attention")
    assert time_cells(model_2) == 0 and cls_2 == [figures.TIME] * figures.T  # time runs over per-frame CLS outputs
    assert time_cells(model_3) == figures.T - 1 and cls_3 is None  # time runs over one position in the other frames


def test_kinetics_guide_commands_are_generated_from_the_zoo():
    spec = importlib.util.spec_from_file_location("make_kinetics", ROOT / "docs" / "make_kinetics.py")
    make_kinetics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_kinetics)
    assert make_kinetics.section() in (ROOT / "docs" / "guides" / "kinetics.md").read_text(), (
        "docs/guides/kinetics.md is stale: run python docs/make_kinetics.py")
    assert "vivit_b_16x2.k400 \\\n    --views 4x3" in make_kinetics.section()


def test_python_started_beside_the_checkout_imports_the_package(tmp_path):
    """A checkout cloned as ``vivit/`` must not shadow the package as an empty namespace package (README's
    ``editable_mode=compat`` install puts the checkout on ``sys.path``, and a regular package beats a namespace one)."""
    import os
    import subprocess
    import sys

    (tmp_path / "vivit").symlink_to(ROOT, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", "import vivit; print(vivit.create_model.__module__)"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "vivit.weights" in proc.stdout, proc.stdout + proc.stderr


def _install_lines() -> list[tuple[str, str]]:
    """Every ``pip install`` command in the README and the docs (code blocks and inline code), with its file."""
    import re

    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for command in re.findall(r"pip install[^`\n]*", path.read_text()):
            found.append((path.relative_to(ROOT).as_posix(), command.split("#")[0].strip()))
    return found


def test_every_editable_install_line_uses_the_same_flags_and_an_extra_with_the_pictures():
    import re

    video_extra = re.search(r"^video = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert '"matplotlib' in video_extra, "the quick start's extra draws the pictures"
    editable = [(where, line) for where, line in _install_lines() if " -e " in f" {line} "]
    assert len(editable) >= 5, editable  # the quick start (twice), Videos, index, video guide, performance guide
    for where, line in editable:
        assert "--config-settings editable_mode=compat" in line, (where, line)
        chosen = set(re.search(r'-e "\.\[([a-z,]+)\]"', line).group(1).split(","))
        assert "video" in chosen or "test" in chosen, (where, line)  # test holds video's packages


def test_missing_matplotlib_messages_name_an_extra():
    import re

    calls = [(path.name, call) for path in sorted((ROOT / "vivit").rglob("*.py"))
             for call in re.findall(r"(?:warning|ImportError)\(.*\n.*", path.read_text())]
    messages = [(name, call) for name, call in calls if "needs matplotlib" in call]
    assert len(messages) >= 3, messages  # confusion.png, timeline.png, attention maps
    for name, message in messages:
        assert 'vivit[video]' in message or 'vivit[explain]' in message, (name, message)


def test_the_openvino_speed_up_is_quoted_one_way_with_where_it_was_measured():
    import re

    for path in (ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "vivit" / "tasks" / "optimize.py"):
        text = path.read_text()
        quoted = re.findall(r"([\d.]+-[\d.]+)(?:x|×) faster than torch|makes it ([\d.]+-[\d.]+)x faster", text)
        assert quoted and {q for pair in quoted for q in pair if q} == {"1.2-5"}, (path.name, quoted)
        assert "AMD EPYC" in text, path.name
