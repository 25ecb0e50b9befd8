"""Generate the documentation's pictures: ``python docs/make_figures.py [OUT_DIR]`` (default ``docs/images``).

- ``token_grouping.png``: which tokens one query attends to in each of the four models.
- ``attention_motion.png``: ``vivit explain``'s heatmap of the embedded ``vivit_motion`` on a generated clip.
- ``compute.png``: parameters and GMACs of the ViViT-B variants against the paper (``benchmarks/flops.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import vivit  # noqa: E402
from vivit.explain import attention_heatmap, frames_for_tokens, save_attention_grid  # noqa: E402
from vivit.synthetic import MOTION_CLASSES, make_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
T, H, W = 4, 3, 3  # a small token grid to draw
QUERY = (1, 1, 1)  # (t, h, w) of the query token


def _masks(model: str) -> tuple[np.ndarray, np.ndarray]:
    """(blue, orange) key masks ``(T, H, W)``: attention over space (Model 1: everything) and over time."""
    t, h, w = QUERY
    frame = np.zeros((T, H, W), bool)
    frame[t] = True
    position = np.zeros((T, H, W), bool)
    position[:, h, w] = True
    if model.startswith("Model 1"):
        return np.ones((T, H, W), bool), np.zeros((T, H, W), bool)
    return frame, position & ~frame


def token_grouping(path: Path) -> Path:
    """Draw the four models' token groupings as rows of per-frame grids."""
    models = ["Model 1: spatio-temporal", "Model 2: factorised encoder", "Model 3: factorised self-attention",
              "Model 4: factorised dot-product"]
    captions = {
        "Model 1: spatio-temporal": "one attention over all t·h·w tokens",
        "Model 2: factorised encoder": "spatial encoder per frame (blue); its CLS outputs form the temporal "
                                       "encoder's tokens (orange)",
        "Model 3: factorised self-attention": "each block: space within the frame (blue), then time at the "
                                              "position (orange)",
        "Model 4: factorised dot-product": "one attention: half the heads over the frame (blue), half over time "
                                           "(orange)",
    }
    fig, axes = plt.subplots(len(models), T, figsize=(2.0 * T, 2.2 * len(models)))
    for row, name in enumerate(models):
        space, time = _masks(name)
        for t in range(T):
            ax = axes[row, t]
            image = np.ones((H, W, 3))
            image[space[t]] = (0.55, 0.7, 0.95)
            image[time[t]] = (0.98, 0.7, 0.4)
            if t == QUERY[0]:
                image[QUERY[1], QUERY[2]] = (0.85, 0.1, 0.1)
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks(np.arange(-0.5, W), minor=True)
            ax.set_yticks(np.arange(-0.5, H), minor=True)
            ax.grid(which="minor", color="k", linewidth=0.8)
            ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
            ax.set_title(f"frame t'={t}", fontsize=8)
        axes[row, 0].set_ylabel(name.split(":")[0], fontsize=9)
        axes[row, T // 2].set_xlabel(captions[name], fontsize=8)
    fig.suptitle("Keys a query token (red) attends to", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def attention_motion(path: Path) -> Path:
    """``vivit explain`` on a generated 'moving_right' clip with the embedded model."""
    model = vivit.create_model("vivit_motion", pretrained=True, attn_impl="eager").eval()
    label = MOTION_CLASSES.index("moving_right")
    clip = torch.from_numpy(make_clip(label, np.random.default_rng(3), num_frames=16, size=32))
    video = clip.permute(3, 0, 1, 2).float() * 2 / 255 - 1
    heat = attention_heatmap(model, video)
    return save_attention_grid(frames_for_tokens(model, video), heat, path,
                               title="vivit_motion, clip 'moving_right': last-layer spatial attention per frame group")


def compute(path: Path) -> Path:
    """Parameters and GMACs of the ViViT-B variants against the paper's numbers."""
    spec = importlib.util.spec_from_file_location("flops", ROOT / "benchmarks" / "flops.py")
    flops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flops)
    names = list(flops.PAPER_GFLOPS)
    ours = [flops.count(n)[1] for n in names]
    paper = [flops.PAPER_GFLOPS[n] for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.bar(x - 0.2, paper, 0.4, label="paper (GFLOPs)")
    ax.bar(x + 0.2, ours, 0.4, label="vivit, counted (GMACs)")
    ax.set_xticks(x, [n.replace("vivit_b_16x2", "B/16x2") for n in names])
    ax.set_ylabel("per 32×224² view")
    ax.legend(fontsize=8)
    ax.set_title("Compute of the ViViT-B variants", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(out: Path = ROOT / "docs" / "images") -> list[Path]:
    """Write every figure into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    return [token_grouping(out / "token_grouping.png"), attention_motion(out / "attention_motion.png"),
            compute(out / "compute.png")]


if __name__ == "__main__":
    for figure in main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images"):
        print(figure)
