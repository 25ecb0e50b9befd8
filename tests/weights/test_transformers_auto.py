"""Every variant through transformers: a vivit folder / Hub repo in AutoModelForVideoClassification (remote code, and
after ``import vivit`` without), in ``pipeline("video-classification")``, and one Hub repo read by vivit, timm and
transformers.

Remote code, import order and the Hub run in subprocesses: each needs a process where vivit (or transformers) is not
imported yet, and ``huggingface_hub`` reads ``HF_ENDPOINT`` when imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vivit
from tests.hub_server import HubServer
from tests.model.test_model import TINY_VARIANTS, tiny
from vivit.data.synthetic import make_clip
from vivit.data.video import read_video, write_video
from vivit.tasks.predict import predict_video
from vivit.weights import transformers_files

transformers = pytest.importorskip("transformers")

REPO_ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-4
LABELS = ["left", "right", "up", "down", "blink", "still", "spin"]


def _model(variant: str) -> vivit.ViViT:
    """A tiny square-frame model of ``variant`` with a non-zero head (the reference zero-initialises it)."""
    model = tiny(variant, img_size=32, num_classes=len(LABELS)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=3.0, generator=torch.Generator().manual_seed(1))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[vivit.ViViT, Path]]:
    """variant -> (model, its save_pretrained folder)."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for variant in TINY_VARIANTS:
        model = _model(variant)
        out[variant] = model, model.save_pretrained(root / variant, label_names=LABELS)
    return out


def _clip(model: vivit.ViViT) -> torch.Tensor:
    return torch.rand(2, 3, model.num_frames, *model.img_size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _run(code: str, tmp_path: Path, **env: str) -> subprocess.Popen:
    child = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VIVIT_"))}
    child.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                 HF_HUB_DISABLE_XET="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                 TRANSFORMERS_VERBOSITY="error", **env)
    child["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-c", code], env=child, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    last = out.strip().splitlines()[-1]
    return json.loads(last[last.find("{") if last.startswith("Do you") else 0:])  # after transformers' prompt


# ------------------------------------------------------------------------------------ Auto classes
@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_a_saved_folder_loads_in_auto_model_after_import_vivit(saved: dict, variant: str) -> None:
    model, folder = saved[variant]
    hf = transformers.AutoModelForVideoClassification.from_pretrained(folder).eval()  # no trust_remote_code
    assert type(hf).__module__ == "vivit.weights.transformers_auto.modeling_vivit_zoo"
    x = _clip(model)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits, model(x), atol=ATOL, rtol=0)
    assert hf.config.id2label == dict(enumerate(LABELS)) and hf.config.num_labels == len(LABELS)
    assert hf.config.num_frames == model.num_frames and hf.config.model_type == transformers_files.MODEL_TYPE


def test_a_frame_sampling_model_gets_its_frame_indices_back(tmp_path: Path) -> None:
    # transformers builds on the meta device and loads only the file's tensors; the indices are a non-saved buffer
    model = tiny("factorized_encoder", embedding="frame_sampling", tubelet_size=(1, 8, 8), n_sampled_frames=2,
                 num_frames=8).eval()
    hf = transformers.AutoModelForVideoClassification.from_pretrained(model.save_pretrained(tmp_path)).eval()
    x = torch.rand(2, 3, 8, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits, model(x), atol=ATOL, rtol=0)


def test_the_wrapper_has_vivits_keys_and_saves_a_folder_vivit_reads(saved: dict, tmp_path: Path) -> None:
    model, folder = saved["factorized_encoder"]
    hf = transformers.AutoModelForVideoClassification.from_pretrained(folder)
    assert hf.state_dict().keys() == model.state_dict().keys()
    hf.save_pretrained(tmp_path / "resaved")
    again = vivit.create_model(str(tmp_path / "resaved"), pretrained=True).eval()
    x = _clip(model)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=0, rtol=0)


_REMOTE = """
import json, sys, torch
from transformers import AutoModelForVideoClassification
folder, clip = sys.argv[1], sys.argv[2]
try:
    AutoModelForVideoClassification.from_pretrained(folder)
    refused = None
except ValueError as err:  # the folder's code needs trust_remote_code (vivit is not imported: nothing registered)
    refused = str(err)
assert "vivit" not in sys.modules
hf = AutoModelForVideoClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = hf(pixel_values=torch.load(clip)).logits
print(json.dumps({"module": type(hf).__module__, "refused": refused, "logits": logits.tolist(),
                  "id2label": hf.config.id2label, "num_frames": hf.config.num_frames}))
"""


def test_remote_code_loads_every_variant_in_a_process_without_vivit(saved: dict, tmp_path: Path) -> None:
    procs = {}
    for variant, (model, folder) in saved.items():
        clip = tmp_path / f"{variant}.pt"
        torch.save(_clip(model).permute(0, 2, 1, 3, 4).contiguous(), clip)
        procs[variant] = _run(_REMOTE.replace("sys.argv[1], sys.argv[2]", f"{str(folder)!r}, {str(clip)!r}"),
                              tmp_path / variant)
    for variant, proc in procs.items():
        result = _result(proc)
        model, _ = saved[variant]
        assert result["module"].startswith("transformers_modules.")  # the folder's own code file
        assert "trust_remote_code" in result["refused"]
        with torch.no_grad():
            torch.testing.assert_close(torch.tensor(result["logits"]), model(_clip(model)), atol=ATOL, rtol=0)
        assert result["id2label"] == {str(i): n for i, n in enumerate(LABELS)} and result["num_frames"] == 4


def test_import_vivit_loads_no_transformers_and_registers_in_either_order(saved: dict, tmp_path: Path) -> None:
    folder = str(saved["factorized_dot_product"][1])
    vivit_first = f"""
import json, sys, vivit
assert "transformers" not in sys.modules, "import vivit loaded transformers"
from transformers import AutoConfig, AutoModelForVideoClassification
config = AutoConfig.from_pretrained({folder!r})
model = AutoModelForVideoClassification.from_pretrained({folder!r})
print(json.dumps([type(config).__name__, type(model).__name__]))
"""
    transformers_first = vivit_first.replace("import json, sys, vivit", "import json, sys").replace(
        'assert "transformers" not in sys.modules, "import vivit loaded transformers"',
        "import transformers.models.auto.modeling_auto\nimport vivit")
    results = [_result(p) for p in [_run(vivit_first, tmp_path / "a"), _run(transformers_first, tmp_path / "b")]]
    assert results == [["VivitZooConfig", "VivitZooForVideoClassification"]] * 2


# --------------------------------------------------------------------------- one repo, three libraries
_THREE_LIBRARIES = """
import json, sys, torch
from transformers import AutoModelForVideoClassification
x = torch.load(sys.argv[1])
hf = AutoModelForVideoClassification.from_pretrained("vivit-test/tiny", trust_remote_code=True).eval()
remote = type(hf).__module__
import timm, vivit
ours = vivit.create_model("hf-hub:vivit-test/tiny", pretrained=True).eval()
theirs = timm.create_model("hf-hub:vivit-test/tiny", pretrained=True).eval()
with torch.no_grad():
    logits = {"transformers": hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits.tolist(),
              "vivit": ours(x).tolist(), "timm": theirs(x).tolist()}
print(json.dumps({"remote": remote, "labels": hf.config.id2label, "logits": logits}))
"""


def test_one_hub_repo_loads_in_vivit_timm_and_transformers(saved: dict, tmp_path: Path) -> None:
    model, folder = saved["factorized_self_attention"]
    clip = tmp_path / "clip.pt"
    torch.save(_clip(model), clip)
    with HubServer(repos={"vivit-test/tiny": folder}) as server:
        result = _result(_run(_THREE_LIBRARIES.replace("sys.argv[1]", repr(str(clip))), tmp_path,
                              HF_ENDPOINT=server.endpoint))
    assert result["remote"].startswith("transformers_modules.")
    assert result["labels"] == {str(i): n for i, n in enumerate(LABELS)}
    with torch.no_grad():
        expected = model(_clip(model))
    for library, logits in result["logits"].items():
        torch.testing.assert_close(torch.tensor(logits), expected, atol=ATOL, rtol=0, msg=library)


# ------------------------------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated clip of exactly one view: T x frame_stride = 4 x 2 frames at the resize size (32 / 0.875 = 36),
    so ``vivit classify --views 1x1`` and the pipeline read the same frames (0, 2, 4, 6) and resize nothing."""
    clip = make_clip(0, np.random.default_rng(0), num_frames=8, size=36)
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", clip)


def _vivit_classify(model: vivit.ViViT, path: Path, decoder: str = "auto") -> torch.Tensor:
    """What ``vivit classify PATH --model FOLDER --views 1x1`` computes: the logits of one centre clip."""
    with torch.no_grad():
        return predict_video(model, path, views="1x1", decoder=decoder)


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_pipeline_steps_give_vivit_classify_logits_and_top5(saved: dict, video: Path, variant: str) -> None:
    if not hasattr(transformers, "AutoVideoProcessor"):
        pytest.skip("this transformers has no video processors (the pipeline's image-processor path only)")
    model, folder = saved[variant]
    pipe = transformers.pipeline("video-classification", model=str(folder))
    assert type(pipe.video_processor).__name__ == "VivitVideoProcessor"
    # The pipeline's own preprocess call (video processor path), on frames decoded with PyAV instead of torchcodec.
    frames = read_video(video).numpy()
    inputs = pipe.video_processor(frames, num_frames=pipe.model.config.num_frames, do_sample_frames=True,
                                  return_tensors="pt")
    outputs = pipe._forward(inputs)
    expected = _vivit_classify(model, video)
    torch.testing.assert_close(outputs.logits[0], expected, atol=ATOL, rtol=0)
    top5 = [r["label"] for r in pipe.postprocess(outputs, top_k=5)]
    assert top5 == [LABELS[i] for i in expected.topk(5).indices]


def _torchcodec_decodes() -> bool:
    try:  # transformers 5's check (the video processors decode with torchcodec only)
        from transformers.utils.import_utils import is_torchcodec_usable
    except ImportError:
        return False
    return is_torchcodec_usable(decode="video")


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_pipeline_on_a_video_file_gives_vivit_classify_top5(saved: dict, video: Path, variant: str) -> None:
    if not _torchcodec_decodes():
        pytest.skip("transformers' video processors decode with torchcodec, which cannot load FFmpeg here")
    model, folder = saved[variant]
    results = transformers.pipeline("video-classification", model=str(folder))(str(video), top_k=len(LABELS))
    expected = _vivit_classify(model, video, decoder="torchcodec")  # the same decoder, so the same pixels
    assert [r["label"] for r in results[:5]] == [LABELS[i] for i in expected.topk(5).indices]
    probs = expected.softmax(-1)
    for r in results:
        assert abs(r["score"] - probs[LABELS.index(r["label"])].item()) < ATOL
