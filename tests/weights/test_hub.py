"""vivit.weights.fetch / vivit.weights.publish against a loopback server: cached downloads, Hub files, saved folders,
cards, pushes.

``huggingface_hub`` reads ``HF_ENDPOINT`` and ``HF_HOME`` when imported, so every Hub call runs in a subprocess
pointed at the loopback server; plain URL downloads (urllib) run in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vivit
from tests.folders import read_only_folder
from tests.hub_server import COMMIT, HubServer
from vivit.weights import fetch, publish

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = dict(variant="spacetime", img_size=32, num_frames=4, tubelet_size=(2, 16, 16), embed_dim=32, depth=1,
                 num_heads=2, mlp_dim=64, num_classes=5)
# what save_pretrained adds for transformers' Auto classes and pipeline (tests/weights/test_transformers_auto.py)
TRANSFORMERS_FILES = ["configuration_vivit_zoo.py", "modeling_vivit_zoo.py", "preprocessor_config.json",
                      "video_preprocessor_config.json"]
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several read chunks


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback requests bypass any proxy; offline switches start unset."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in ("HF_HUB_OFFLINE", "VIVIT_OFFLINE", "VIVIT_CACHE"):
        monkeypatch.delenv(name, raising=False)


def tiny_model(**overrides: object) -> vivit.ViViT:
    return vivit.ViViT(**{**TINY_ARGS, **overrides}).eval()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------- download_url
def test_download_url_caches_and_reuses_without_a_request(tmp_path: Path) -> None:
    with HubServer(files={"w.bin": PAYLOAD}) as server:
        url = server.file_url("w.bin")
        first = fetch.download_url(url, tmp_path)
        second = fetch.download_url(url, tmp_path)
    assert first == second == fetch.cache_path(url, tmp_path)
    assert first.read_bytes() == PAYLOAD
    assert first.name.endswith("-w.bin") and len(first.name) == len("0123456789abcdef-w.bin")
    assert server.requests == [("GET", "/files/w.bin")]
    # the entry and its record, no temp files
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, first.name + ".record.json"]
    assert json.loads(fetch.record_path(first).read_text()) == {
        "url": url, "size": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest()}


def test_download_url_default_cache_is_vivit_cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIVIT_CACHE", str(tmp_path / "env-cache"))
    with HubServer(files={"w.bin": b"abc"}) as server:
        path = fetch.download_url(server.file_url("w.bin"))
    assert path.parent == tmp_path / "env-cache"


def test_urls_with_the_same_basename_get_different_cache_files(tmp_path: Path) -> None:
    a = fetch.cache_path("https://example.com/a/checkpoint", tmp_path)
    b = fetch.cache_path("https://example.com/b/checkpoint", tmp_path)
    assert a != b and a.name.endswith("-checkpoint") and b.name.endswith("-checkpoint")


def test_killed_download_raises_and_leaves_no_cache_entry(tmp_path: Path) -> None:
    with HubServer(files={"w.bin": PAYLOAD}, drop_after={"/files/w.bin": 300_000}) as server:
        url = server.file_url("w.bin")
        with pytest.raises(RuntimeError, match="incomplete") as info:
            fetch.download_url(url, tmp_path)
        assert "300000 of 1048576 bytes" in str(info.value) and str(fetch.cache_path(url, tmp_path)) in str(info.value)
        assert list(tmp_path.iterdir()) == []  # neither the cache file nor a temp file
        server.drop_after.clear()  # the next attempt downloads afresh instead of reusing the partial file
        assert fetch.download_url(url, tmp_path).read_bytes() == PAYLOAD
    assert server.requests.count(("GET", "/files/w.bin")) == 2


def test_http_404_is_one_clear_error(tmp_path: Path) -> None:
    with HubServer() as server:
        url = server.file_url("missing.bin")
        with pytest.raises(RuntimeError, match="HTTP 404") as info:
            fetch.download_url(url, tmp_path)
    message = str(info.value)
    assert url in message and str(fetch.cache_path(url, tmp_path)) in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback wall
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_error_says_network_and_where_to_put_the_file(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/weights/checkpoint"
    with pytest.raises(RuntimeError, match="network may be unreachable") as info:
        fetch.download_url(url, tmp_path, timeout=5)
    message = str(info.value)
    assert url in message and "refused" in message.lower()
    assert f"save it as {fetch.cache_path(url, tmp_path)}" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "VIVIT_OFFLINE"])
def test_offline_without_cache_names_url_and_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    monkeypatch.setenv(switch, "1")
    with HubServer(files={"w.bin": PAYLOAD}) as server:
        url = server.file_url("w.bin")
        with pytest.raises(RuntimeError, match="offline") as info:
            fetch.download_url(url, tmp_path)
    assert url in str(info.value) and str(fetch.cache_path(url, tmp_path)) in str(info.value)
    assert server.requests == []


def test_offline_with_cache_returns_the_cached_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with HubServer(files={"w.bin": PAYLOAD}) as server:
        url = server.file_url("w.bin")
        cached = fetch.download_url(url, tmp_path)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert fetch.download_url(url, tmp_path) == cached
    assert len(server.requests) == 1


def test_sha256_mismatch_caches_nothing(tmp_path: Path) -> None:
    with HubServer(files={"w.bin": PAYLOAD}) as server:
        with pytest.raises(RuntimeError, match="sha256"):
            fetch.download_url(server.file_url("w.bin"), tmp_path, sha256="00" * 32)
        assert list(tmp_path.iterdir()) == []
        digest = hashlib.sha256(PAYLOAD).hexdigest()
        assert fetch.download_url(server.file_url("w.bin"), tmp_path, sha256=digest[:12]).is_file()


def test_non_http_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        fetch.download_url(str(tmp_path / "weights.bin"), tmp_path)


# ------------------------------------------------------------------------------------------------ cache trust
@pytest.mark.parametrize("damage", ["truncate", "replace"])
def test_a_damaged_cache_entry_is_refused_naming_it_and_force_download_replaces_it(tmp_path: Path,
                                                                                    damage: str) -> None:
    with HubServer(files={"w.bin": PAYLOAD}) as server:
        url = server.file_url("w.bin")
        entry = fetch.download_url(url, tmp_path)
        entry.write_bytes(PAYLOAD[:1000] if damage == "truncate" else bytes(len(PAYLOAD)))
        with pytest.raises(RuntimeError, match="delete this cache entry") as info:
            fetch.download_url(url, tmp_path)
        assert str(entry) in str(info.value) and "force_download=True" in str(info.value)
        assert len(server.requests) == 1  # refused from the record, not re-fetched behind the user's back
        assert fetch.download_url(url, tmp_path, force_download=True).read_bytes() == PAYLOAD
        assert fetch.download_url(url, tmp_path).read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_a_hand_placed_file_is_checked_against_a_known_digest(tmp_path: Path) -> None:
    url = "https://example.invalid/weights/checkpoint"
    entry = fetch.cache_path(url, tmp_path)
    entry.write_bytes(b"not the release")
    assert fetch.download_url(url, tmp_path) == entry  # no record, no digest: the documented manual placement
    with pytest.raises(RuntimeError, match="delete this cache entry"):
        fetch.download_url(url, tmp_path, sha256=hashlib.sha256(PAYLOAD).hexdigest())


def test_a_trickling_server_is_abandoned_at_the_deadline_leaving_nothing(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("VIVIT_DOWNLOAD_TIMEOUT", "0.5")
    with HubServer(files={"w.bin": b"x" * 200}, trickle={"/files/w.bin": 0.05}) as server:
        start = time.monotonic()
        with pytest.raises(RuntimeError, match=r"bytes/s.*VIVIT_DOWNLOAD_TIMEOUT=0.5"):
            fetch.download_url(server.file_url("w.bin"), tmp_path)
        elapsed = time.monotonic() - start
    assert elapsed < 8, elapsed  # expected ~0.5 s; the trickle alone takes 10 s (a bound, not a speed test)
    assert list(tmp_path.iterdir()) == []  # no .part, no entry, no record


def test_download_timeout_must_be_a_positive_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIVIT_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="VIVIT_DOWNLOAD_TIMEOUT"):
        fetch.download_url("https://example.invalid/w.bin", tmp_path)


# ------------------------------------------------------------------------------------------ parse_hub_name
@pytest.mark.parametrize("name, expected", [
    ("hf-hub:google/vivit-b-16x2-kinetics400", ("google/vivit-b-16x2-kinetics400", None)),
    ("hf-hub:org/vivit_b_16x2.k400@v1.0", ("org/vivit_b_16x2.k400", "v1.0")),
    (f"hf_hub:org/repo@{COMMIT}", ("org/repo", COMMIT)),
    ("hf-hub:org/repo@refs/pr/1", ("org/repo", "refs/pr/1")),
])
def test_parse_hub_name(name: str, expected: tuple[str, str | None]) -> None:
    assert fetch.parse_hub_name(name) == expected


@pytest.mark.parametrize("name", [
    "google/vivit", "hf-hub:", "hf-hub:repo", "hf-hub:a/b/c", "hf-hub:org/re po", "hf-hub:org/repo@",
    "hf-hub:org/a..b", "hf-hub:org/-repo", "hf-hub:/repo",
    # revisions follow git's ref rules: nothing that could climb out of the cache's refs/ folder
    "hf-hub:org/repo@../../../x", "hf-hub:org/repo@refs/../../x", "hf-hub:org/repo@/abs", "hf-hub:org/repo@a//b",
    "hf-hub:org/repo@.hidden", "hf-hub:org/repo@main.lock", "hf-hub:org/repo@a:b", "hf-hub:org/repo@a\\b",
    "hf-hub:org/repo@x@{1}", "hf-hub:org/repo@end.", "hf-hub:org/repo@tab\there",
])
def test_parse_hub_name_rejects_malformed_names(name: str) -> None:
    with pytest.raises(ValueError, match="hf-hub|repo id|revision"):
        fetch.parse_hub_name(name)


def _saved_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


# ------------------------------------------------------------------------- save_pretrained / from_pretrained
def test_save_load_round_trip_rebuilds_an_identical_model(tmp_path: Path) -> None:
    model = tiny_model()
    with torch.no_grad():  # non-zero head so the logits comparison means something
        model.head.weight.normal_()
    out = publish.save_pretrained(model, tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", "config.json", "model.safetensors",
                                                            *TRANSFORMERS_FILES])

    config = _saved_config(out)
    rebuilt = vivit.ViViT.from_pretrained(out).eval()
    state, expected = rebuilt.state_dict(), model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert rebuilt.model_args == vivit.ViViT(**config["model_args"]).model_args
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(video), model(video), rtol=0, atol=0)

    assert config["architecture"] == "vivit" and config["library_name"] == "vivit"
    assert (config["num_classes"], config["num_features"], config["global_pool"]) == (5, 32, "token")
    assert config["model_args"]["tubelet_size"] == [2, 16, 16]  # JSON lists, not tuples
    assert config["pretrained_cfg"]["input_size"] == [3, 4, 32, 32]
    assert config["pretrained_cfg"]["mean"] == config["pretrained_cfg"]["std"] == [0.5] * 3


def test_save_pretrained_records_the_current_head(tmp_path: Path) -> None:
    model = tiny_model(variant="factorized_dot_product", global_pool="avg")
    model.reset_classifier(3, global_pool="max")
    config = _saved_config(publish.save_pretrained(model, tmp_path))
    assert config["model_args"]["num_classes"] == config["num_classes"] == 3
    assert config["model_args"]["global_pool"] == "max"
    assert vivit.ViViT.from_pretrained(tmp_path).global_pool == "max"


def test_saved_registered_model_keeps_arch_provenance_and_card(tmp_path: Path) -> None:
    model = vivit.create_model("vivit_b_16x2.k400", depth=1, img_size=32, num_frames=4, embed_dim=32, num_heads=2,
                               mlp_dim=64)
    labels = [f"class {i}" for i in range(400)]
    config = _saved_config(publish.save_pretrained(model, tmp_path, label_names=labels, repo_id="me/tiny.k400"))
    cfg = config["pretrained_cfg"]
    assert config["architecture"] == cfg["architecture"] == "vivit_b_16x2"
    assert config["label_names"] == labels
    assert "hf_hub_id" not in cfg and "url" not in cfg  # a saved folder is its own source (timm's remove_source)
    assert cfg["source_checkpoint"] == "hf-hub:google/vivit-b-16x2-kinetics400"
    assert cfg["source_format"] == "vivit" and cfg["source_checkpoint_format"] == "transformers"
    card = (tmp_path / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    for line in ("library_name: vivit", "license: apache-2.0", "- video-classification", "- vivit", "- timm",
                 "pipeline_tag: video-classification"):
        assert line in front.splitlines()
    for text in ("# me/tiny.k400", "`vivit_b_16x2`", "Model 1", "Parameters:", "GMACs", "B × 3 × 4 × 32 × 32",
                 "tubelet 2×16×16", "x * 2 / 255 - 1", "400 classes (Kinetics-400)", "`class 0`",
                 "hf-hub:google/vivit-b-16x2-kinetics400", 'vivit.ViViT.from_pretrained("hf-hub:me/tiny.k400")',
                 "@inproceedings{arnab2021vivit", "Schmid, Cordelia"):
        assert text in body, text
    # random weights of a tiny model: the checkpoint's 79.9 (4x3) is not theirs (issue 24)
    assert "79.9" not in body and "## Evaluation" not in body


def test_new_head_drops_the_source_accuracy_from_the_card(tmp_path: Path) -> None:
    model = vivit.create_model("vivit_b_16x2.k400", num_classes=7, depth=1, img_size=32, num_frames=4, embed_dim=32,
                               num_heads=2, mlp_dim=64)
    config = _saved_config(publish.save_pretrained(model, tmp_path))
    assert "top1" not in config["pretrained_cfg"] and "label_set" not in config["pretrained_cfg"]
    assert "## Evaluation" not in (tmp_path / "README.md").read_text()


CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
API_PATH = re.compile(r"(?<![\w/.\-'\"])vivit(?:\.[A-Za-z_]\w*)+")


def test_model_card_snippets_run_on_the_saved_folder(tmp_path: Path) -> None:
    model = tiny_model()
    torch.nn.init.normal_(model.head.weight)
    folder = publish.save_pretrained(model, tmp_path / "my model")  # a space in the path, too
    card = (folder / "README.md").read_text()
    snippets = CODE_BLOCK.findall(card)
    assert snippets and publish.CARD_FOLDER in snippets[0]
    namespace: dict = {}
    for i, code in enumerate(snippets):  # the card's placeholder folder is the one substitution
        exec(compile(code.replace(publish.CARD_FOLDER, str(folder)), f"card[{i}]", "exec"), namespace)  # noqa: S102
    with torch.no_grad():
        torch.testing.assert_close(namespace["logits"], model(namespace["video"]), rtol=0, atol=0)
    for path in API_PATH.findall(card):  # the prose's API paths exist too (vivit.tasks.predict.predict_video)
        obj = vivit
        for part in path.split(".")[1:]:
            obj = getattr(obj, part)


def test_label_names_must_match_num_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 names.*5 classes"):
        publish.save_pretrained(tiny_model(), tmp_path, label_names=["a", "b", "c"])


def test_stale_model_args_are_refused(tmp_path: Path) -> None:
    model = tiny_model()
    model.head = torch.nn.Linear(32, 7)  # swapped by hand: model_args still say 5 classes
    with pytest.raises(ValueError, match="model_args no longer describe"):
        publish.save_pretrained(model, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_meta_model_cannot_be_saved(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = tiny_model()
    with pytest.raises(ValueError, match="meta device"):
        publish.save_pretrained(model, tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors_error_names_the_file(tmp_path: Path, damage: str) -> None:
    publish.save_pretrained(tiny_model(), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\x07not a safetensors file" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match="safetensors") as info:
        vivit.ViViT.from_pretrained(tmp_path)
    assert str(weights) in str(info.value)


def test_missing_or_broken_config_error_names_the_file(tmp_path: Path) -> None:
    publish.save_pretrained(tiny_model(), tmp_path)
    config = tmp_path / "config.json"
    config.write_text("{ not json")
    with pytest.raises(ValueError, match="not valid JSON") as info:
        vivit.ViViT.from_pretrained(tmp_path)
    assert str(config) in str(info.value)
    config.write_text(json.dumps({"model_type": "vivit", "hidden_size": 768}))  # a transformers config, cut short
    with pytest.raises(ValueError, match="transformers ViViT config lacks") as info:
        vivit.ViViT.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)
    config.unlink()
    with pytest.raises(ValueError, match=r"not a saved ViViT \(config.json with model_args\)"):
        vivit.create_model(f"local-dir:{tmp_path}", pretrained=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vivit.create_model(f"local-dir:{tmp_path / 'nowhere'}", pretrained=True)


def test_missing_weights_error_names_the_file(tmp_path: Path) -> None:
    publish.save_pretrained(tiny_model(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        vivit.ViViT.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------- interrupted saves
def test_a_save_killed_between_renames_is_refused_when_loaded(tmp_path: Path) -> None:
    """New weights beside the old config.json (the state a kill between the renames leaves) never load silently."""
    old, new = tiny_model(num_classes=5), tiny_model(num_classes=5)
    publish.save_pretrained(old, tmp_path / "folder", label_names=list("abcde"))
    publish.save_pretrained(new, tmp_path / "new", label_names=list("vwxyz"))
    (tmp_path / "new" / "model.safetensors").replace(tmp_path / "folder" / "model.safetensors")
    for load in (lambda: vivit.ViViT.from_pretrained(tmp_path / "folder"),
                 lambda: vivit.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True),
                 lambda: vivit.load_pretrained(tiny_model(num_classes=5), tmp_path / "folder")):
        with pytest.raises(ValueError, match="is inconsistent: model.safetensors is not the weights file") as info:
            load()
        assert "Save the model again" in str(info.value)
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    size = (tmp_path / "folder" / "model.safetensors").stat().st_size
    assert config["weights_file"]["size"] == size and len(config["weights_file"]["sha256"]) == 64


def test_the_next_save_removes_orphans_of_killed_saves(tmp_path: Path) -> None:
    tmp_path.joinpath(".tmpAb12Cd").write_bytes(b"half of a safetensors file")  # safetensors' own temp file
    tmp_path.joinpath(".model.safetensors.0123abcd.tmp").write_bytes(b"ours")
    tmp_path.joinpath(".tmp-notes").write_text("not ours: kept")
    publish.save_pretrained(tiny_model(), tmp_path)
    tmp_path.joinpath(".modeling_vivit_zoo.py.0123abcd.tmp").write_text("ours too")
    publish.save_pretrained(tiny_model(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".tmp-notes", "README.md", "config.json",
                                                                 "model.safetensors", *TRANSFORMERS_FILES])


def test_saved_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        publish.save_pretrained(tiny_model(), tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    expected = dict.fromkeys(["model.safetensors", "config.json", "README.md", *TRANSFORMERS_FILES], 0o640)
    assert modes == expected  # safetensors alone: 0o600


def test_non_finite_weights_are_not_saved(tmp_path: Path) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"head.weight \(1 of 160\)"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    model.save_pretrained(tmp_path / "out", allow_non_finite=True)
    with pytest.raises(ValueError, match="NaN or infinite"):
        vivit.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)


def test_a_read_only_folder_error_names_the_folder(tmp_path: Path) -> None:
    folder = read_only_folder(tmp_path)
    with pytest.raises(OSError, match="cannot save the model to") as info:
        publish.save_pretrained(tiny_model(), folder)
    assert str(folder) in str(info.value) and ".tmp" not in str(info.value)


# --------------------------------------------------------------------------------- Hub (in a subprocess)
_PRELUDE = """
import json, sys
from vivit.weights import fetch, publish

def attempt(fn, *args, **kwargs):
    try:
        return {"ok": str(fn(*args, **kwargs))}
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        return {"error": type(err).__name__, "message": str(err)}
"""


def run_hub(code: str, server: HubServer, hf_home: Path, **env: str) -> dict:
    """Run ``code`` (after ``_PRELUDE``) against the loopback Hub; returns the JSON its last line prints."""
    child = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VIVIT_"))}
    child.update(HF_ENDPOINT=server.endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_XET="1",
                 HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost",
                 no_proxy="127.0.0.1,localhost", **env)
    child["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + code], env=child, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_trickling_hub_file_is_abandoned_at_the_deadline_leaving_nothing(tmp_path: Path) -> None:
    path = "/vivit-test/tiny/resolve/main/model.safetensors"
    with HubServer(repos={"vivit-test/tiny": {"model.safetensors": b"x" * 400}}, trickle={path: 0.05}) as server:
        code = """
import time
start = time.monotonic()
result = attempt(fetch.hf_hub_file, "vivit-test/tiny", "model.safetensors")
print(json.dumps({**result, "elapsed": time.monotonic() - start}))
"""
        result = run_hub(code, server, tmp_path / "hf", VIVIT_DOWNLOAD_TIMEOUT="0.5")
    assert result["error"] == "RuntimeError", result
    message = result["message"]
    assert "\n" not in message and "'model.safetensors'" in message and "vivit-test/tiny" in message
    assert re.search(r"bytes/s.*VIVIT_DOWNLOAD_TIMEOUT=0.5.*nothing was cached", message), message
    assert result["elapsed"] < 8, result  # the trickle alone takes 20 s, and forever at one byte per 20 s
    left = [p for p in (tmp_path / "hf").rglob("*")
            if p.is_file() and ("blobs" in p.parts or "snapshots" in p.parts or p.name.endswith(".incomplete"))]
    assert left == [], left  # no blob, no .incomplete file, no snapshot link (refs and lock files are metadata)


def test_a_hub_file_at_a_good_rate_passes_the_guard(tmp_path: Path) -> None:
    with HubServer(repos={"vivit-test/tiny": {"model.safetensors": PAYLOAD}}) as server:
        code = """
path = fetch.hf_hub_file("vivit-test/tiny", "model.safetensors")
print(json.dumps({"size": len(open(path, "rb").read())}))
"""
        assert run_hub(code, server, tmp_path / "hf", VIVIT_DOWNLOAD_TIMEOUT="0.5") == {"size": len(PAYLOAD)}


@pytest.fixture
def saved_repo(tmp_path: Path) -> tuple[vivit.ViViT, Path]:
    model = tiny_model()
    return model, publish.save_pretrained(model, tmp_path / "repo")


def test_hf_hub_file_round_trip_through_the_loopback_hub(tmp_path: Path, saved_repo: tuple) -> None:
    model, folder = saved_repo
    code = f"""
import torch, vivit
config = fetch.hf_hub_file("vivit-test/tiny", "config.json")
weights = fetch.hf_hub_file("vivit-test/tiny", "model.safetensors", revision="{COMMIT}")
rebuilt = vivit.ViViT.from_pretrained(weights.parent)
torch.save(rebuilt.state_dict(), {str(tmp_path / "rebuilt.pt")!r})
print(json.dumps({{"same_folder": config.parent == weights.parent, "commit": weights.parent.name}}))
"""
    with HubServer(repos={"vivit-test/tiny": folder}) as server:
        result = run_hub(code, server, tmp_path / "hf")
    assert result == {"same_folder": True, "commit": COMMIT}
    rebuilt = torch.load(tmp_path / "rebuilt.pt", weights_only=True)
    assert all(torch.equal(rebuilt[k], v) for k, v in model.state_dict().items())
    assert ("HEAD", "/vivit-test/tiny/resolve/main/config.json") in server.requests
    assert not any(path.startswith("/api/models") for _, path in server.requests)  # resolve is all it needs


def test_a_model_from_a_pinned_revision_reloads_that_revision(tmp_path: Path, saved_repo: tuple) -> None:
    _, folder = saved_repo
    code = f"""
import vivit
model = vivit.create_model("hf-hub:vivit-test/tiny@{COMMIT}", pretrained=True)
vivit.load_pretrained(model)
print(json.dumps(vivit.weights.load.saved_source(model.pretrained_cfg)))
"""
    with HubServer(repos={"vivit-test/tiny": folder}) as server:
        source = run_hub(code, server, tmp_path / "hf")
    assert source == f"hf-hub:vivit-test/tiny@{COMMIT}"
    assert not any("/resolve/main/" in path for _, path in server.requests)


def test_hf_hub_file_missing_file_repo_and_revision_are_clear_errors(tmp_path: Path) -> None:
    code = """
print(json.dumps([attempt(fetch.hf_hub_file, "vivit-test/tiny", "model.safetensors"),
                  attempt(fetch.hf_hub_file, "vivit-test/nope", "config.json"),
                  attempt(fetch.hf_hub_file, "vivit-test/tiny", "config.json", "v9")]))
"""
    with HubServer(repos={"vivit-test/tiny": {"config.json": b"{}"}}) as server:
        file, repo, revision = run_hub(code, server, tmp_path / "hf")
    assert file["error"] == "FileNotFoundError"
    assert "'vivit-test/tiny'" in file["message"] and "no file 'model.safetensors'" in file["message"]
    assert f"{server.endpoint}/vivit-test/tiny/resolve/main/model.safetensors" in file["message"]
    assert repo["error"] == "FileNotFoundError" and "'vivit-test/nope' was not found" in repo["message"]
    assert revision["error"] == "FileNotFoundError" and "no revision 'v9'" in revision["message"]


def test_hf_hub_file_offline_with_empty_cache_is_a_clear_error(tmp_path: Path) -> None:
    code = 'print(json.dumps(attempt(fetch.hf_hub_file, "vivit-test/tiny", "config.json")))'
    with HubServer(repos={"vivit-test/tiny": {"config.json": b"{}"}}) as server:
        result = run_hub(code, server, tmp_path / "hf", HF_HUB_OFFLINE="1")
    assert result["error"] == "RuntimeError"
    for text in ("offline", "'vivit-test/tiny'", "'config.json'", "revision 'main'", "vivit.load_pretrained",
                 "hf download vivit-test/tiny config.json"):
        assert text in result["message"], text
    assert not any(path.startswith("/vivit-test") for _, path in server.requests)


def test_hf_hub_file_offline_serves_the_hugging_face_cache(tmp_path: Path) -> None:
    code = 'print(json.dumps(attempt(fetch.hf_hub_file, "vivit-test/tiny", "config.json")))'
    with HubServer(repos={"vivit-test/tiny": {"config.json": b"{}"}}) as server:
        online = run_hub(code, server, tmp_path / "hf")
        n = len(server.requests)
        offline = run_hub(code, server, tmp_path / "hf", VIVIT_OFFLINE="1")
    assert "ok" in online and offline == online
    assert len(server.requests) == n


def test_push_to_hub_refused_by_the_hub_is_a_clear_error(tmp_path: Path) -> None:
    code = f"""
import vivit
model = vivit.ViViT(**{TINY_ARGS!r})
print(json.dumps(attempt(publish.push_to_hub, model, "me/tiny", private=True)))
"""
    with HubServer() as server:
        result = run_hub(code, server, tmp_path / "hf", HF_TOKEN="hf_loopbacktesttoken")
    assert result["error"] == "RuntimeError"
    assert "'me/tiny'" in result["message"] and "403" in result["message"] and "hf auth login" in result["message"]
    assert ("POST", "/api/repos/create") in server.requests


def test_push_to_hub_checks_arguments_and_offline_mode_first(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="repo id"):
        publish.push_to_hub(tiny_model(), "not a repo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="offline mode"):
        publish.push_to_hub(tiny_model(), "hf-hub:me/tiny@dev")


def test_importing_hub_loads_no_optional_dependency() -> None:
    code = ("import sys, vivit; before = set(sys.modules); "
            "import vivit.weights.fetch, vivit.weights.read, vivit.weights.publish; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new & {'huggingface_hub', 'safetensors', 'httpx2', 'httpx', 'tqdm'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_legacy_pickle_repo_loads_offline_from_the_cache(tmp_path: Path, saved_repo: tuple) -> None:
    """A repo with only pytorch_model.bin: offline, the missing safetensors must not hide the cached pickle."""
    model, folder = saved_repo
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    code = """
import torch, vivit
m = vivit.create_model("hf-hub:vivit-test/tiny", pretrained=True)
print(json.dumps({"sum": float(sum(p.double().sum() for p in m.state_dict().values()))}))
"""
    with HubServer(repos={"vivit-test/tiny": folder}) as server:
        online = run_hub(code, server, tmp_path / "hf")
        offline = run_hub(code, server, tmp_path / "hf", HF_HUB_OFFLINE="1")
    want = float(sum(p.double().sum() for p in model.state_dict().values()))
    assert online == offline == {"sum": pytest.approx(want)}


def test_model_card_counts_the_full_architecture_not_the_trimmed_forward():
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = vivit.ViViT(**TINY_ARGS)  # token pooling: model(x) computes only the CLS token in its last block
        x = torch.zeros(1, 3, model.num_frames, *model.img_size)
    counts = {}
    runs = {"full": lambda: model.forward_head(model.forward_features(x)), "forward": lambda: model(x)}
    for name, run in runs.items():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            run()
        counts[name] = counter.get_total_flops() / 2e9
    assert counts["forward"] < counts["full"]
    config = {"pretrained_cfg": {"input_size": (3, model.num_frames, *model.img_size)}}
    assert publish._gmacs(model, config) == pytest.approx(counts["full"])


def test_hub_card_snippet_and_from_pretrained_idioms_load_the_repo(tmp_path: Path) -> None:
    model = vivit.create_model("vivit_ti_16x2", num_classes=5, depth=1, img_size=32, num_frames=4).eval()
    torch.nn.init.normal_(model.head.weight)
    folder = publish.save_pretrained(model, tmp_path / "repo", repo_id="vivit-test/tiny")
    (snippet,) = CODE_BLOCK.findall((folder / "README.md").read_text())
    assert 'from_pretrained("hf-hub:vivit-test/tiny")' in snippet
    code = snippet + """
same = [vivit.ViViT.from_pretrained("vivit-test/tiny").eval(),  # "org/repo", as Hugging Face users write it
        vivit.create_model("vivit_ti_16x2", pretrained="hf-hub:vivit-test/tiny", depth=1, img_size=32, num_frames=4)]
with torch.no_grad():
    print(json.dumps({"video": video.tolist(), "logits": [logits.tolist()] + [m.eval()(video).tolist() for m in same],
                      "hub_ids": [m.pretrained_cfg.get("hf_hub_id") for m in same]}))
"""
    with HubServer(repos={"vivit-test/tiny": folder}) as server:
        result = run_hub(code, server, tmp_path / "hf")
    with torch.no_grad():
        expected = model(torch.tensor(result["video"]))
    for logits in result["logits"]:
        torch.testing.assert_close(torch.tensor(logits), expected, rtol=1e-6, atol=1e-6)
    assert result["hub_ids"] == ["vivit-test/tiny", "vivit-test/tiny"]


# ------------------------------------------------------------------------------------ Hub trust (subprocess)
def test_hf_hub_file_refuses_content_that_changed_between_head_and_get(tmp_path: Path) -> None:
    code = 'print(json.dumps(attempt(fetch.hf_hub_file, "vivit-test/tiny", "model.safetensors")))'
    path = "/vivit-test/tiny/resolve/main/model.safetensors"
    with HubServer(repos={"vivit-test/tiny": {"model.safetensors": PAYLOAD}},
                   swap_on_get={path: bytes(len(PAYLOAD))}) as server:
        result = run_hub(code, server, tmp_path / "hf")
    assert result["error"] == "CacheIntegrityError"  # a RuntimeError
    assert "changed while it was downloaded" in result["message"] and "nothing was cached" in result["message"]
    assert not [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and p.parent.name in ("blobs", COMMIT)]


def test_hf_hub_file_refuses_a_damaged_cached_blob_and_force_download_replaces_it(tmp_path: Path) -> None:
    code = """
path = fetch.hf_hub_file("vivit-test/tiny", "model.safetensors")
blob = path.resolve()
blob.chmod(0o644)
blob.write_bytes(b"truncated")
refused = attempt(fetch.hf_hub_file, "vivit-test/tiny", "model.safetensors")
again = fetch.hf_hub_file("vivit-test/tiny", "model.safetensors", force_download=True)
print(json.dumps({"refused": refused, "blob": str(blob), "size": again.stat().st_size}))
"""
    with HubServer(repos={"vivit-test/tiny": {"model.safetensors": PAYLOAD}}) as server:
        result = run_hub(code, server, tmp_path / "hf")
    assert result["refused"]["error"] == "CacheIntegrityError"
    assert "delete this cache entry" in result["refused"]["message"] and result["blob"] in result["refused"]["message"]
    assert result["size"] == len(PAYLOAD)


def test_hub_redirect_loop_is_one_clear_error(tmp_path: Path) -> None:
    code = 'print(json.dumps(attempt(fetch.hf_hub_file, "vivit-test/tiny", "config.json")))'
    path = "/vivit-test/tiny/resolve/main/config.json"
    with HubServer(repos={"vivit-test/tiny": {"config.json": b"{}"}}, redirects={path: path}) as server:
        result = run_hub(code, server, tmp_path / "hf")
    assert result["error"] == "RuntimeError" and "TooManyRedirects" in result["message"]


def test_unreachable_hub_is_one_line_within_seconds(tmp_path: Path) -> None:
    """Connection refused: no retry warnings (once printed twice over 27 s), one line from the CLI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VIVIT_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf"),
               NO_PROXY="127.0.0.1,localhost", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                                         env.get("PYTHONPATH")])))
    code = ("import json, sys, time\nfrom vivit.cli import main\nstart = time.monotonic()\n"
            f"status = main(['convert', 'hf-hub:org/repo', {str(tmp_path / 'out')!r}])\n"
            "print(json.dumps([status, time.monotonic() - start]))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    status, seconds = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == 1 and proc.stderr.count("\n") == 1 and "could not be reached" in proc.stderr, proc.stderr
    assert seconds < 15, seconds  # expected < 1 s; the retries it replaced took 27 s (a bound, not a speed test)


def test_a_git_stored_hub_file_is_checked_against_its_git_blob_sha1(tmp_path: Path) -> None:
    """Non-LFS files (config.json) are named by their git blob sha1 in the Hugging Face cache."""
    data = b'{"model_args": {}}'
    blob = tmp_path / "blobs" / hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    blob.parent.mkdir()
    blob.write_bytes(data)
    link = tmp_path / "config.json"
    link.symlink_to(blob)
    fetch._check_hub_blob(link, "'config.json'", fresh=False, sha256=None)
    blob.write_bytes(b'{"model_args": 1}')
    with pytest.raises(fetch.CacheIntegrityError, match="git blob sha1.*delete this cache entry"):
        fetch._check_hub_blob(link, "'config.json'", fresh=False, sha256=None)


def test_the_rate_guard_leaves_huggingface_hubs_shared_session_as_it_was(tmp_path: Path) -> None:
    # Other libraries (transformers, timm) share huggingface_hub's session: vivit's hook is on it only while vivit
    # downloads, and a plain request through the session afterwards is not wrapped.
    with HubServer(repos={"vivit-test/tiny": {"model.safetensors": PAYLOAD}}) as server:
        code = f"""
from huggingface_hub.utils import get_session
session = get_session()
before = list(session.event_hooks["response"])
fetch.hf_hub_file("vivit-test/tiny", "model.safetensors")
after = list(session.event_hooks["response"])
with session.stream("GET", {server.endpoint + "/vivit-test/tiny/resolve/main/model.safetensors"!r}) as response:
    size = sum(len(chunk) for chunk in response.iter_bytes())
    stream = type(response.stream).__name__
print(json.dumps({{"same": before == after, "vivit": [h.__module__ for h in after if "vivit" in h.__module__],
                  "stream": stream, "size": size}}))
"""
        result = run_hub(code, server, tmp_path / "hf", VIVIT_DOWNLOAD_TIMEOUT="5")
    assert result["same"] and result["vivit"] == [] and result["size"] == len(PAYLOAD), result
    assert result["stream"] != "GuardedStream", result
