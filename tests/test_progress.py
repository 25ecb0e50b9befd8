"""The one progress-bar helper and the one list of dtype names."""

import io

from vivit import cli
from vivit.progress import progress_bar
from vivit.tasks.optimize import DTYPES


def test_progress_bar_only_when_shown():
    assert progress_bar([1, 2], show=False) is None
    bar = progress_bar([1, 2, 3], show=True, file=io.StringIO(), desc="x")
    assert list(bar) == [1, 2, 3]
    bar.close()


def test_progress_bar_off_on_a_non_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_bar(total=3) is None


def test_cli_dtype_names_are_the_optimizer_dtypes():
    assert cli.DTYPES == tuple(DTYPES)
