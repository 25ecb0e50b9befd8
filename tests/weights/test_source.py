"""vivit.weights.source.parse_source: every kind of weights source, and one clear ValueError for each bad text."""

from __future__ import annotations

from pathlib import Path

import pytest

from vivit.weights.source import Source, parse_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("text, expected", [
    ("vivit_b_16x2_fe.k400", Source("tag", "vivit_b_16x2_fe.k400", name="vivit_b_16x2_fe.k400")),
    ("vivit_b_16x2_fe", Source("name", "vivit_b_16x2_fe", name="vivit_b_16x2_fe")),
    ("vivit_b_16x2_fe.nope", Source("name", "vivit_b_16x2_fe.nope", name="vivit_b_16x2_fe.nope")),
    ("not_a_model", Source("name", "not_a_model", name="not_a_model")),
    ("hf-hub:org/repo", Source("hub", "hf-hub:org/repo", repo_id="org/repo")),
    (f"hf_hub:org/repo@{COMMIT}", Source("hub", f"hf_hub:org/repo@{COMMIT}", repo_id="org/repo", revision=COMMIT)),
    ("https://host/w.safetensors", Source("url", "https://host/w.safetensors", url="https://host/w.safetensors")),
    ("local-dir:some/dir", Source("local-dir", "local-dir:some/dir", path=Path("some/dir"))),
    ("no/such/dir", Source("missing", "no/such/dir", path=Path("no/such/dir"))),
    ("weights.safetensors", Source("missing", "weights.safetensors", path=Path("weights.safetensors"))),
])
def test_each_kind_of_text(text: str, expected: Source) -> None:
    assert parse_source(text) == expected


def test_existing_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"")
    assert parse_source(str(tmp_path / "w.pt")) == Source("file", str(tmp_path / "w.pt"), path=tmp_path / "w.pt")
    assert parse_source(str(tmp_path)) == Source("folder", str(tmp_path), path=tmp_path)
    assert parse_source(str(tmp_path)).local and not parse_source("hf-hub:org/repo").local


def test_zoo_names_win_over_a_folder_unless_folder_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vivit_b_16x2_fe").mkdir()
    assert parse_source("vivit_b_16x2_fe").kind == "name"
    assert parse_source("vivit_b_16x2_fe", folder_first=True).kind == "folder"


def test_bare_org_repo_is_a_hub_repo_only_when_asked_and_no_such_path(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_source("org/repo@v1", bare_hub=True) == Source("hub", "hf-hub:org/repo@v1", repo_id="org/repo",
                                                                revision="v1")
    assert parse_source("org/repo").kind == "missing"
    (tmp_path / "org" / "repo").mkdir(parents=True)
    assert parse_source("org/repo", bare_hub=True).kind == "folder"


@pytest.mark.parametrize("text, match", [
    ("", "expected a weights source"),
    ("local-dir:", "expected 'local-dir:PATH'"),
    ("hf-hub:", "invalid Hub repo id"),
    ("hf-hub:repo", "invalid Hub repo id"),
    ("hf-hub:a/b/c", "invalid Hub repo id"),
    ("hf-hub:org/re po", "invalid Hub repo id"),
    ("hf-hub:org/a--b", "invalid Hub repo id"),
    ("hf-hub:org/repo.git", "invalid Hub repo id"),  # huggingface_hub's validate_repo_id refuses it
    ("hf-hub:org/repo@", "invalid revision"),
    ("hf-hub:org/repo@../x", "invalid revision"),
])
def test_bad_texts_give_one_clear_value_error(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        parse_source(text)
    assert "expected" in str(err.value)  # every message says what was expected
