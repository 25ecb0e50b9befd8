"""vivit models in Hugging Face transformers, route by route: how far each route's logits are from vivit's.

Random-weight models of each variant (seeded) (head drawn with unit variance, so logits are of order 1-10), saved with
``save_pretrained`` and exported with ``vivit.export_transformers``; then

- ``export``: Model 1 as transformers' own ``VivitForVideoClassification``, same input tensor;
- ``auto``: ``AutoModelForVideoClassification.from_pretrained(folder)`` after ``import vivit`` (the remote-code route
  runs the same class from the folder's copy of the file), same input tensor;
- ``pipeline``: a generated video of exactly one clip (T x frame_stride frames at the resize size): the pipeline's
  video-processor preprocess on frames decoded by PyAV vs ``vivit classify --views 1x1``;
- ``legacy``: the pipeline's image-processor path (no video processor), which decodes the first
  ``num_frames * frame_sampling_rate`` frames and picks ``linspace`` indices in them;
- ``long``: the video-processor path on a video three clips long: it spreads the frames over the whole video, vivit
  takes one centre clip at the model's stride.

Usage: ``python benchmarks/transformers_routes.py [--size s] [--frames 8] [--img 56]``. Prints one line per route.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import vivit
from vivit.data.synthetic import make_clip
from vivit.data.video import read_video, write_video
from vivit.tasks.predict import predict_video

VARIANTS = {"": "spacetime", "_fe": "factorized_encoder", "_fsa": "factorized_self_attention",
            "_fdp": "factorized_dot_product"}


def _model(size: str, suffix: str, frames: int, img: int, classes: int) -> vivit.ViViT:
    model = vivit.create_model(f"vivit_{size}_16x2{suffix}", num_classes=classes, num_frames=frames,
                               img_size=img).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, generator=torch.Generator().manual_seed(0))
    return model


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def main() -> None:
    import transformers
    from transformers import AutoModelForVideoClassification, VideoClassificationPipeline, pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="s")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img", type=int, default=56)  # resize side 64: even, as H.264 needs
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)  # the models' random weights: the same numbers on every run
    transformers.logging.set_verbosity_error()
    labels = [f"class{i}" for i in range(10)]
    print(f"transformers {transformers.__version__}, torch {torch.__version__}; vivit_{args.size}_16x2*, "
          f"{args.frames} frames at {args.img}x{args.img}, random weights")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        resize = int(args.img / 0.875)
        stride = 2
        one_clip = write_video(root / "one.mp4", make_clip(0, np.random.default_rng(0),
                                                           num_frames=args.frames * stride, size=resize))
        long = write_video(root / "long.mp4", make_clip(1, np.random.default_rng(1),
                                                        num_frames=3 * args.frames * stride, size=resize))
        x = torch.rand(1, 3, args.frames, args.img, args.img, generator=torch.Generator().manual_seed(1)) * 2 - 1
        for suffix, variant in VARIANTS.items():
            model = _model(args.size, suffix, args.frames, args.img, len(labels))
            folder = model.save_pretrained(root / variant, label_names=labels)
            with torch.no_grad():
                expected = model(x)
            if variant == "spacetime":
                vivit.export_transformers(model, root / "export", label_names=labels)
                start = time.perf_counter()
                hf = AutoModelForVideoClassification.from_pretrained(root / "export").eval()
                took = time.perf_counter() - start
                with torch.no_grad():
                    got = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
                print(f"{variant:27s} export   {type(hf).__name__}: max |dlogit| {_diff(got, expected):.2e} "
                      f"(load {took:.2f} s)")
            start = time.perf_counter()
            pipe = pipeline("video-classification", model=str(folder))
            took = time.perf_counter() - start
            with torch.no_grad():
                got = pipe.model(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
            print(f"{variant:27s} auto     {type(pipe.model).__name__}: max |dlogit| {_diff(got, expected):.2e} "
                  f"(pipeline load {took:.2f} s)")
            for name, video in (("pipeline", one_clip), ("long", long)):
                frames = read_video(video).numpy()
                inputs = pipe.video_processor(frames, num_frames=args.frames, do_sample_frames=True,
                                              return_tensors="pt")
                with torch.no_grad():
                    got = pipe.model(**inputs).logits[0]
                    ref = predict_video(model, video, views="1x1")
                same = got.topk(5).indices.tolist() == ref.topk(5).indices.tolist()
                n = len(frames)
                theirs = (np.arange(args.frames) * n // args.frames).tolist()
                ours = ((n - args.frames * stride) // 2 + np.arange(args.frames) * stride).tolist()
                if variant == "spacetime":
                    print(f"{'':27s} {name:8s} {n} frames: pipeline reads {theirs}, vivit {ours}")
                print(f"{variant:27s} {name:8s} video processor vs vivit classify --views 1x1: max |dlogit| "
                      f"{_diff(got, ref):.2e}, top-5 {'same' if same else 'differs'}")
            image_processor = transformers.AutoImageProcessor.from_pretrained(
                folder, image_processor_filename="preprocessor_config.json")
            legacy = VideoClassificationPipeline(model=pipe.model, image_processor=image_processor)
            for rate in (1, stride):
                result = legacy(str(one_clip), frame_sampling_rate=rate, top_k=len(labels), function_to_apply="none")
                got = torch.tensor([next(r["score"] for r in result if r["label"] == n) for n in labels])
                same = got.topk(5).indices.tolist() == ref_one(model, one_clip).topk(5).indices.tolist()
                indices = np.linspace(0, args.frames * rate - 1, num=args.frames, dtype=np.int64).tolist()
                print(f"{variant:27s} legacy   image processor, frame_sampling_rate={rate} (frames {indices}): "
                      f"max |dlogit| {_diff(got, ref_one(model, one_clip)):.2e}, top-5 "
                      f"{'same' if same else 'differs'}")


def ref_one(model: vivit.ViViT, video: Path) -> torch.Tensor:
    with torch.no_grad():
        return predict_video(model, video, views="1x1")


if __name__ == "__main__":
    main()
