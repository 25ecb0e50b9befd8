"""The first hour of a new user: the demo cleans up after itself and the help promises only what was measured."""

from __future__ import annotations

import tempfile

import pytest

from vivit import cli


def test_demo_without_out_leaves_no_temporary_folder(tmp_path, monkeypatch, capsys):
    pytest.importorskip("av")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cli.main(["demo", "--num", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 generated clips (in a temporary folder; --out DIR keeps them)" in out and "1/1 correct" in out
    assert list(tmp_path.iterdir()) == []


def test_token_merging_help_does_not_promise_speed_unconditionally(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    help_text = text[text.index("--token-merging R"):]
    assert "faster, slightly less accurate" not in help_text
    assert "slower" in help_text and "token_merging.md" in help_text


def test_first_help_line_names_every_command(capsys):
    parser = cli.build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert {"classify", "demo", "timeline", "evaluate"} <= commands
    assert all(name in parser.description for name in commands), (sorted(commands), parser.description)


@pytest.mark.parametrize("kind", ["garbage", "pickle", "objects"])
def test_a_garbage_logits_file_is_refused_without_numpys_pickle_advice(tmp_path, kind):
    import pickle

    import numpy as np

    from vivit.data.datasets import Dist
    from vivit.tasks.evaluate import _open_logits

    path = tmp_path / "logits.npy"
    if kind == "objects":
        np.save(path, np.array([{}, {}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(b"garbage" if kind == "garbage" else pickle.dumps({"a": 1}))
    with pytest.raises(ValueError) as refused:
        _open_logits(path, 2, 3, Dist())
    message = str(refused.value)
    assert message.startswith(f"{path}: is not a logits file written by vivit evaluate (")
    assert "allow_pickle" not in message and "pickle.load" not in message
