"""Generate the documentation's pictures: ``python docs/make_figures.py [OUT_DIR]`` (default ``docs/images``).

- ``token_grouping.png``: which tokens one query attends to in each of the four models.
- ``attention_motion.png``: ``vivit explain``'s heatmap of the embedded ``vivit_motion`` on a generated clip.
- ``compute.png``: GMACs and parameters of the ViViT-B variants against the paper (``benchmarks/flops.py``).
- ``timeline_motion.png``: ``vivit timeline`` with ``vivit_motion`` on a generated video whose motion changes every
  3 s (docs/guides/timeline.md).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import vivit  # noqa: E402
from vivit.data.synthetic import MOTION_CLASSES, make_clip  # noqa: E402
from vivit.tasks.explain import attention_heatmap, frames_for_tokens, save_attention_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
T, H, W = 4, 3, 3  # a small token grid to draw
QUERY = (1, 1, 1)  # (t, h, w) of the query token


SPACE, TIME, QUERY_RED, EMPTY = (0.55, 0.7, 0.95), (0.98, 0.7, 0.4), (0.85, 0.1, 0.1), (1.0, 1.0, 1.0)
MODELS = {
    "Model 1: spatio-temporal": "one attention over all t·h·w tokens of the clip",
    "Model 2: factorised encoder": "spatial encoder: a patch attends within its frame (blue) and never to other "
                                   "frames' patches;\ntemporal encoder: the frames' CLS outputs (one per frame) "
                                   "attend to each other (orange; outlined: the query's own frame)",
    "Model 3: factorised self-attention": "each block: attention within the frame (blue), then over time at the same "
                                          "position (orange)",
    "Model 4: factorised dot-product": "one attention: half the heads over the frame (blue), half over time at the "
                                       "same position (orange)",
}


def _colours(model: str) -> tuple[np.ndarray, list[tuple[float, float, float]] | None]:
    """Per-token colours ``(T, H, W, 3)`` of one model, and its per-frame CLS cells (Model 2 only, else None)."""
    t, h, w = QUERY
    grid = np.ones((T, H, W, 3))
    cls = None
    if model.startswith("Model 1"):
        grid[:] = SPACE
    else:
        grid[t] = SPACE
        if model.startswith("Model 2"):
            # The temporal encoder's tokens are the spatial encoder's per-frame outputs, not patch positions.
            cls = [TIME] * T
        else:
            grid[:, h, w] = np.where(np.arange(T)[:, None] == t, SPACE, TIME)
    grid[t, h, w] = QUERY_RED
    return grid, cls


def _draw_frame(ax: plt.Axes, grid: np.ndarray, cls: tuple[float, float, float] | None, query_frame: bool) -> None:
    for h in range(H):
        for w in range(W):
            ax.add_patch(plt.Rectangle((w, H - 1 - h), 1, 1, facecolor=grid[h, w], edgecolor="k", linewidth=0.8))
    if cls is not None:  # the frame's CLS token, drawn above its patches
        ax.add_patch(plt.Rectangle((W / 2 - 0.5, H + 0.35), 1, 1, facecolor=cls, linewidth=2.2 if query_frame else 0.8,
                                   edgecolor=QUERY_RED if query_frame else "k"))
        ax.text(W / 2, H + 0.85, "CLS", ha="center", va="center", fontsize=6.5)
    ax.set_xlim(-0.1, W + 0.1)
    ax.set_ylim(-0.1, H + 1.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def token_grouping(path: Path) -> Path:
    """Draw the four models' token groupings: one row of per-frame token grids per model."""
    fig = plt.figure(figsize=(8.4, 10.2))
    rows = fig.subfigures(len(MODELS), 1)
    for sub, (name, caption) in zip(rows, MODELS.items(), strict=True):
        grid, cls = _colours(name)
        axes = sub.subplots(1, T)
        for t, ax in enumerate(axes):
            _draw_frame(ax, grid[t], cls[t] if cls else None, t == QUERY[0])
            ax.set_title(f"frame t'={t}", fontsize=8)
        sub.suptitle(name, fontsize=10, fontweight="bold", y=0.99)
        sub.text(0.5, 0.02, caption, ha="center", va="bottom", fontsize=8)
        sub.subplots_adjust(left=0.03, right=0.97, top=0.82, bottom=0.2, wspace=0.15)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="k") for c in (QUERY_RED, SPACE, TIME)]
    fig.legend(handles, ["query token", "keys within the frame (space)", "keys across frames (time)"],
               loc="upper center", ncol=3, fontsize=8.5, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("Which tokens one query token attends to", fontsize=12, y=1.02)
    fig.savefig(path, dpi=90, bbox_inches="tight")
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
    """GMACs and parameters of the ViViT-B variants against the paper's numbers, one labelled quantity per panel."""
    spec = importlib.util.spec_from_file_location("flops", ROOT / "benchmarks" / "flops.py")
    flops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flops)
    names = list(flops.PAPER_GFLOPS)
    counted = [flops.count(n) for n in names]
    panels = [
        ("GMACs per 32×224² view\n(multiply-accumulates; 1 GMAC = 2 GFLOPs)",
         [flops.PAPER_GFLOPS[n] for n in names], [c[1] for c in counted], "paper (its \"GFLOPs\" are GMACs)"),
        ("parameters (millions)", [flops.PAPER_PARAMS_M[n] for n in names], [c[0] for c in counted], "paper"),
    ]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for ax, (label, paper, ours, paper_label) in zip(axes, panels, strict=True):
        for offset, values, legend in ((-0.2, paper, paper_label), (0.2, ours, "vivit, counted")):
            bars = ax.bar(x + offset, values, 0.4, label=legend)
            ax.bar_label(bars, fmt="%.1f", fontsize=6.5, padding=1)
        ax.set_xticks(x, [n.replace("vivit_b_16x2", "B/16x2") for n in names])
        ax.set_ylabel(label, fontsize=9)
        ax.set_ylim(0, max(paper + ours) * 1.18)
        ax.legend(fontsize=7.5, loc="lower right")
    fig.suptitle("ViViT-B variants: compute and size, counted by benchmarks/flops.py vs the paper", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def timeline_motion(path: Path, video: Path | None = None) -> Path:
    """``vivit timeline`` on a generated 30 s video whose motion changes every 3 s (the guide's example)."""
    import tempfile

    from vivit.data.synthetic import make_sequence
    from vivit.data.video import write_video
    from vivit.tasks.timeline import plot_timeline, timeline_video

    rng = np.random.default_rng(0)
    labels = [MOTION_CLASSES.index(n) for n in ("moving_right", "blinking", "moving_up", "static", "moving_down_left",
                                                "moving_left", "blinking", "moving_up_right", "static", "moving_down")]
    frames = make_sequence(labels, rng, frames_each=24, size=32).repeat(4, axis=1).repeat(4, axis=2)
    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(video or Path(tmp) / "motion_changes.mp4", frames, fps=8)
        model = vivit.create_model("vivit_motion", pretrained=True)
        timeline_video(video, model, Path(tmp) / "out", min_segment=1.5, plot=False)
        windows = [json.loads(line) for line in (Path(tmp) / "out" / "windows.jsonl").read_text().splitlines()]
        segs = json.loads((Path(tmp) / "out" / "segments.json").read_text())
        return plot_timeline(windows, segs, path, title="vivit timeline motion_changes.mp4 --model vivit_motion "
                             "--min-segment 1.5 (motion changes every 3 s)", thumbnails=video)


def main(out: Path = ROOT / "docs" / "images") -> list[Path]:
    """Write every figure into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    return [token_grouping(out / "token_grouping.png"), attention_motion(out / "attention_motion.png"),
            compute(out / "compute.png"), timeline_motion(out / "timeline_motion.png")]


if __name__ == "__main__":
    for figure in main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images"):
        print(figure)
