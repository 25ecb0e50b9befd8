"""The ``vivit`` command: ``classify``, ``demo``, ``explain``, ``list``, ``convert``, ``evaluate``, ``extract``,
``timeline``; it only calls the package's functions.

Every failure is one line on stderr, never a traceback. Exit status (``EXIT_STATUS``): 0 everything worked; 1 a video,
model or file failed (``classify`` reports each video and goes on with the next); 2 bad command-line usage (argparse);
3 ``evaluate`` / ``extract`` stopped by ``--stop-after`` (run again to continue); 130 interrupted (Ctrl-C, quietly).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_list(args: argparse.Namespace) -> int:
    from vivit.zoo import ARCHS, PRETRAINED, list_models  # the zoo is data: listing it loads neither torch nor timm

    names = list_models(args.filter or "", pretrained=args.pretrained)
    if not names:  # the closest names and how to see them all
        stem, every = args.filter.strip("*?[]"), list_models(pretrained=args.pretrained)
        close = difflib.get_close_matches(stem, every, n=5, cutoff=0.3) if stem else []
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ValueError(f"no model matches {args.filter!r}.{hint} Run `vivit list` (all architectures) or `vivit list "
                         "--pretrained`.")
    if args.json:
        rows = [PRETRAINED[n].to_dict() if n in PRETRAINED else {"architecture": n, **ARCHS[n]} for n in names]
        print(json.dumps(rows, indent=2, default=list, allow_nan=False))
    else:
        print("\n".join(names))
    return 0


def _load_source(args: argparse.Namespace):
    """Build the model ``convert`` saves: a tag / hf-hub name, or a file with --arch or --scenic-config."""
    import vivit
    from vivit.weights.build import build
    from vivit.weights.fit import last_load
    from vivit.weights.read import detect_format
    from vivit.weights.source import parse_source

    source = parse_source(args.source)
    overrides = {k: v for k, v in dict(img_size=args.img_size, num_frames=args.num_frames).items() if v is not None}
    if source.kind in ("tag", "hub"):
        return build(source, True, force_download=args.force_download, **overrides)
    if args.scenic_config:
        config = json.loads(Path(args.scenic_config).read_text())
        config = config.get("scenic_config", config)  # a golden sidecar holds the config under this key
        if "img_size" not in overrides:
            raise SystemExit("vivit convert: --img-size is needed with --scenic-config (reference configs do not "
                             "state the frame size)")
        return vivit.convert.from_scenic(args.source, config, **overrides)
    folder = parse_source(args.source, folder_first=True)
    if folder.kind == "folder" and detect_format(folder.path) in ("transformers-folder", "vivit-folder"):
        return build(folder, True, **overrides)
    if not args.arch:
        raise SystemExit(f"vivit convert: {args.source} needs --arch NAME (a registered architecture) or "
                         "--scenic-config CONFIG.json to say what model the weights belong to")
    # Weights with no config of their own into --arch: the head size is the weights' (another only with
    # --num-classes); positional embeddings that do not fit are resampled only to an explicit --num-frames/--img-size.
    model = build(parse_source(args.arch), source, num_classes=args.num_classes, force_download=args.force_download,
                  **overrides)
    report = last_load(model)
    if report.new_head and report.new_head[0] is None and args.num_classes is None:
        raise SystemExit(f"vivit convert: {args.source} has no classifier head: pass --num-classes N for a new "
                         "zero-initialised head (0 for none)")
    if report.resampled and not overrides:
        raise SystemExit(
            f"vivit convert: the positional embeddings of {args.source} do not fit {args.arch}'s token grid "
            f"{model.grid_size} ({model.num_frames} frames of {model.img_size[0]}x{model.img_size[1]}): pass "
            "--num-frames and --img-size of the clips the weights were trained on, or the size to resample to")
    return model


def _cmd_convert(args: argparse.Namespace) -> int:
    from vivit.weights.export import export_transformers
    from vivit.weights.fit import last_load

    model = _load_source(args)
    report = last_load(model)
    for line in report.lines() if report else ():
        print(line)
    out = export_transformers(model, args.out_dir) if args.to == "transformers" else model.save_pretrained(args.out_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({model.variant}, {params / 1e6:.1f}M params, {model.num_classes} classes): "
          "model.safetensors, config.json, README.md")
    if args.repo_id:
        print(f"publish with: huggingface-cli upload {args.repo_id} {out}")
    return 0


DEFAULT_MODEL = "vivit_b_16x2.k400"
OFFLINE_HINT = ("use --model vivit_motion (ships with vivit) or --model FOLDER (a saved model; `vivit convert` makes "
                "one from a weights file)")
DTYPES = ("float32", "bfloat16", "float16")  # vivit.tasks.optimize.DTYPES, without importing torch for --help
BACKENDS = ("auto", "torch", "openvino")  # vivit.tasks.optimize.BACKENDS, without importing torch for --help
BACKEND_HELP = ("what runs the model: auto (OpenVINO on CPU when installed, pip install \"vivit[openvino]\"; else "
                "torch), torch, or openvino")
EXIT_STATUS = {"ok": 0, "failed": 1, "usage": 2, "stopped": 3, "interrupted": 130}


def load_model_for_cli(name: str, **kwargs: object):
    """A model from a tag/arch name, ``hf-hub:`` name, or a local folder, in eval mode; one-line errors for the CLI
    (``kwargs`` go to the builder)."""
    from vivit.weights.build import build
    from vivit.weights.source import parse_source

    source = parse_source(name, folder_first=True)
    if source.kind == "folder":
        name = f"local-dir:{name}"  # what the error line names, as before
    try:
        model = build(source, True, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        from vivit.files import first_line

        raise RuntimeError(f"cannot load {name}: {first_line(err)} — {OFFLINE_HINT}") from None
    return model.eval()


def _model_from_flags(args: argparse.Namespace, **kwargs: object):
    """The ``--model`` of a command (:func:`load_model_for_cli`) with ``--drop-static`` set.

    What the model would refuse of ``--token-merging`` / ``--drop-static`` is found first from its config alone (the
    zoo's data, a folder's or Hub repo's ``config.json``): bad usage, before any weights are read. A source whose
    config only its weights tell (a bare file) is checked by the model once loaded.
    """
    if args.token_merging or args.drop_static:  # else no config is fetched
        from vivit.files import first_line
        from vivit.model.args import check_token_merging, static_refusal
        from vivit.weights.load import peek_model_args
        from vivit.weights.source import parse_source

        source = parse_source(args.model, folder_first=True)
        try:
            model_args = peek_model_args(source, force_download=args.force_download)
        except (RuntimeError, FileNotFoundError, OSError) as err:
            raise RuntimeError(f"cannot load {args.model}: {first_line(err)} — {OFFLINE_HINT}") from None
        if model_args is not None:
            if args.drop_static and (refusal := static_refusal(model_args["variant"], model_args["embedding"])):
                raise UsageError(f"--drop-static: {args.model}: {refusal}")
            try:
                check_token_merging(model_args, args.token_merging)
            except ValueError as err:
                merging = str(args.token_merging).replace(" ", "")
                raise UsageError(f"--token-merging {merging}: {args.model}: {err}") from None
    model = load_model_for_cli(args.model, force_download=args.force_download, **kwargs)
    if args.drop_static:
        model.set_drop_static(args.drop_static)  # Models 2-4 refuse it in one line
    return model


def _integer(low: int = 1, most: int | None = None):
    """An argparse type: an integer from ``low`` to ``most`` (e.g. timeline's MAX_BATCH_SIZE; no bound without it)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (most is not None and value > most):
            span = "a positive integer" if most is None else f"an integer from {low} to {most}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {text[:30]}")
        return value
    return parse



def _seconds(text: str, zero: bool = False) -> float:
    """An argparse type: a finite number of seconds above 0 (from 0 with ``zero``) and at most 1e6 (``inf``,
    ``nan`` and 1e308 are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 <= value if zero else 0 < value) or not value <= 1e6:
        raise argparse.ArgumentTypeError(f"must be a number of seconds {'from 0 to' if zero else 'above 0 and at most'}"
                                         f" 1e6, got {text[:30]}")
    return value


def _token_merging(text: str) -> int | tuple | list:
    """``--token-merging``: ``16``, ``"(16, -1)"`` (r, inflection) or ``"[16, 16, 8]"`` (one r per block)."""
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, int | tuple | list) or isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expected an int r, an (r, inflection) pair such as '(16, -1)' or a list "
                                         f"such as '[16, 16, 8]', got {text!r}")
    return value


def _add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """The model flags every ``--model`` command takes (``classify``, ``evaluate``, ``extract``, ``timeline``)."""
    p.add_argument("--model", required=required, default=None if required else DEFAULT_MODEL,
                   help="tag, hf-hub:org/repo or folder")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cuda:LOCAL_RANK when available "
                   "for evaluate, extract and a listing's timeline; else the CPU)")
    p.add_argument("--dtype", choices=("auto", *DTYPES, "int8"), default="auto",
                   help="run the model in this precision (auto: bfloat16 on CPUs with native bfloat16, else the "
                   "weights'); bfloat16 is ~3.4x faster on CPUs with AMX, ~1.5-2x with AVX512-BF16; int8: weights "
                   "and activations quantized by NNCF on the OpenVINO model (CPU, pip install \"vivit[int8]\"), "
                   "calibrated on --calibration")
    p.add_argument("--calibration", type=Path, metavar="LISTING",
                   help="--dtype int8: videos like those the model will see (a CSV, folder per class or list of "
                        "files), whose clips are sampled as at inference (the model's views, frame stride, crops)")
    p.add_argument("--calibration-clips", type=_integer(), metavar="N",
                   help="--dtype int8: how many calibration clips (default 300, fewer where 300 would take over "
                        "1 GiB; at most the listing's videos times the views per video)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.add_argument("--token-merging", type=_token_merging, default=0, metavar="R",
                   help="merge R similar tokens per block (ToMe; Models 1 and 2), slightly less accurate; fewer "
                        "tokens are faster where the cores are free (Model 1, r=24: 1.4-1.7x on one thread) but can "
                        "be slower on a busy multi-threaded CPU (docs/guides/token_merging.md); also "
                        "'(R, INFLECTION)' or '[R1, R2, ...]' (default 0: off)")
    p.add_argument("--drop-static", type=_drop_static, default=0.0, metavar="TAU",
                   help="Model 1: skip tubelets whose pixels barely change from the previous tubelet (Run-Length "
                        "Tokenization's rule; TAU in the model's [-1, 1] input units, 'default' for 0.045, RLT's 0.1 "
                        "in ImageNet units); runs in torch (default 0: off)")
    p.add_argument("--force-download", action="store_true", help="download the weights again even when cached")


def _drop_static(text: str) -> float:
    from vivit.model.static import DROP_STATIC_DEFAULT

    try:
        tau = DROP_STATIC_DEFAULT if text == "default" else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 2] or 'default', got {text!r}") from None
    if not 0 <= tau <= 2:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 2] (a mean absolute change of [-1, 1] pixels) or "
                                         f"'default', got {text!r}")
    return tau


def _model_runtime(args: argparse.Namespace, command: str, model):
    """The ``--model`` of a command (loaded: ``model``) made ready by :func:`vivit.tasks.runtime.setup_runtime`, which
    says on stderr which runtime, dtype and device run it (``--dtype auto`` resolved after loading: a failed load is
    its one line)."""
    from vivit.tasks.runtime import setup_runtime

    logging.getLogger("vivit.tasks.optimize").setLevel(logging.INFO)  # "converting once" before a long wait
    if args.dtype == "int8":
        dtype, backend = None, _int8_backend(args, model, command)
    else:
        dtype, backend = resolve_dtype(args.dtype, args.device, command), args.backend
    return setup_runtime(model, args.device, dtype, backend, args.token_merging, say=_say(command))


def _say(command: str):
    """A line on stderr naming the command (the runtime's and the calibration's progress)."""
    return lambda line: print(f"vivit {command}: {line}", file=sys.stderr, flush=True)


def _int8_backend(args: argparse.Namespace, model, command: str, pre_logits: bool = False):
    """``--dtype int8``: the model quantized on clips of ``--calibration`` sampled as the command samples its own."""
    from vivit.tasks.predict import default_views
    from vivit.tasks.runtime import int8_backend

    return int8_backend(model, args.calibration, getattr(args, "views", None) or default_views(model),
                        args.calibration_clips, decoder=getattr(args, "decoder", "auto"),
                        token_merging=args.token_merging, pre_logits=pre_logits, say=_say(command))


def _int8_problem(args: argparse.Namespace) -> str | None:
    """Why ``--dtype int8`` / ``--calibration`` cannot run as given (checked before the model is loaded), or None."""
    import importlib.util

    if getattr(args, "dtype", None) != "int8":
        given = [f for f in ("calibration", "calibration_clips") if getattr(args, f, None) is not None]
        return (f"--{given[0].replace('_', '-')} is for --dtype int8 (the clips it quantizes with): add --dtype "
                "int8, or drop it") if given else None
    if args.calibration is None:
        return ("--dtype int8 needs --calibration LISTING: videos like those the model will see (a CSV, folder per "
                "class or list of files; a few hundred clips are sampled from them as at inference)")
    if args.backend == "torch":
        return "--dtype int8 runs NNCF's quantized model in OpenVINO, not torch: use --backend auto or openvino"
    if args.device is not None and not str(args.device).startswith("cpu"):
        return f"--dtype int8 runs on the CPU (OpenVINO), not {args.device}: drop --device, or use a float --dtype"
    if args.drop_static:
        return ("--drop-static keeps a different number of tokens per clip, which a converted OpenVINO graph cannot: "
                "drop it for --dtype int8")
    if getattr(args, "layer", None) is not None or getattr(args, "compile", False):
        flag = "layer" if getattr(args, "layer", None) is not None else "compile"
        return f"--{flag} runs in torch: drop it for --dtype int8"
    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        return f"--dtype int8 needs NNCF and OpenVINO ({', '.join(missing)} not installed): pip install \"vivit[int8]\""
    from vivit.data.datasets import read_listing

    try:
        read_listing(args.calibration)
    except ValueError as err:
        return f"--calibration: {err}"
    return None


def _cmd_classify(args: argparse.Namespace) -> int:
    import time

    from vivit.data.video import parse_views
    from vivit.progress import progress_bar
    from vivit.tasks.predict import default_views, predict_video, top_k

    model = _model_from_flags(args)
    views = parse_views(args.views) if args.views else default_views(model)
    c, t, (h, w) = model.in_chans, model.num_frames, model.img_size  # what runs (the runtime's line: dtype, device)
    print(f"vivit classify: {args.model}, {views[0]}x{views[1]} views ({_count(views[0] * views[1], 'clip')} of "
          f"{c}x{t}x{h}x{w}) per video", file=sys.stderr, flush=True)
    runtime = _model_runtime(args, "classify", model)
    model, run = runtime.model, runtime.fn
    labels = model.pretrained_cfg.get("label_names")
    class_splits = model.pretrained_cfg.get("class_splits")
    failed = 0
    bar = progress_bar(args.videos, desc="classifying", unit="video", leave=False)
    for path in args.videos if bar is None else bar:
        start = time.perf_counter()
        try:
            logits = predict_video(model, path, views, args.batch_size, device=args.device, run=run)
            if not bool(logits.isfinite().all()):
                # NaN/Inf logits make every score NaN: refused, so --json never prints NaN (not JSON) or null scores.
                raise ValueError("the model's logits are not finite (NaN or Inf), so its scores mean nothing; check "
                                 "the weights (or --dtype float16 overflowing) and the video")
        except (ValueError, FileNotFoundError, OSError, RuntimeError, MemoryError) as err:
            failed += 1
            print(_one_line(err, path), file=sys.stderr)
            continue
        tops = top_k(logits, args.top_k, labels, class_splits)
        if args.json:
            # A split head reports one list per part under "top_k_by_split" instead of "top_k".
            ranked = {"top_k": tops[0]} if len(tops) == 1 else {"top_k_by_split": tops}
            print(json.dumps({"video": str(path), "model": args.model, "views": f"{views[0]}x{views[1]}", **ranked,
                              "seconds": round(time.perf_counter() - start, 3)}, allow_nan=False), flush=True)
        else:
            print(f"{path}: " + " | ".join(", ".join(f"{t['label']} ({t['score']:.1%})" for t in top) for top in tops),
                  flush=True)
    if failed:
        print(f"vivit classify: {failed} of {len(args.videos)} videos failed", file=sys.stderr)
    return 1 if failed else 0


def _count(n: int, noun: str) -> str:
    """``1 clip``, ``2 clips``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def resolve_dtype(dtype: str | None, device: str | None, command: str) -> str | None:
    """``--dtype auto``: bfloat16 on a CPU that multiplies it natively (said on stderr), else the weights' own."""
    if dtype != "auto":
        return dtype
    import torch

    from vivit.tasks.optimize import auto_dtype

    where = device or ("cuda" if torch.cuda.is_available() and command != "classify" else "cpu")
    if auto_dtype(where) != torch.bfloat16:
        return None
    print(f"vivit {command}: --dtype auto: bfloat16, since this CPU multiplies it natively (AVX512-BF16 or AMX), "
          "2-4x faster than float32; --dtype float32 for full precision", file=sys.stderr, flush=True)
    return "bfloat16"


def _one_line(err: BaseException, path: Path) -> str:
    """``err`` as one line that names ``path`` once."""
    from vivit.data.datasets import is_out_of_memory

    if is_out_of_memory(err):  # MemoryError, CUDA out of memory, a CPU allocation torch refused
        return f"{path}: out of memory while decoding or classifying it; free memory or use a smaller --batch-size"
    message = _collapse(err)
    return message if str(path) in message else f"{path}: {message}"


def _collapse(err: BaseException) -> str:
    """An exception's message on one line (a multi-line message is joined, not cut)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def _cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np
    import torch

    from vivit.data.synthetic import MOTION_CLASSES, make_clip
    from vivit.data.video import write_video
    from vivit.tasks.predict import predict_video

    model = load_model_for_cli("vivit_motion")
    labels = model.pretrained_cfg["label_names"]
    frames, size = model.num_frames, model.img_size[0]
    scratch = None if args.out else tempfile.TemporaryDirectory(prefix="vivit-demo-")  # removed when the demo ends
    out = args.out or Path(scratch.name)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder for the clips (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    kept = f"-> {out}" if scratch is None else "(in a temporary folder; --out DIR keeps them)"
    print(f"vivit demo: {args.num} generated clips {kept}, classified by vivit_motion (ships with vivit, offline)")
    correct = 0
    for i in range(args.num):
        label = int(rng.integers(len(MOTION_CLASSES)))
        clip = torch.from_numpy(make_clip(label, rng, num_frames=frames, size=size))
        big = clip.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # 4x larger to look at
        path = write_video(out / f"clip{i}_{MOTION_CLASSES[label]}.mp4", big, fps=8)
        probs = torch.softmax(predict_video(model, path, (1, 1)), dim=-1)
        score, index = probs.max(dim=-1)
        ok = labels[int(index)] == MOTION_CLASSES[label]
        correct += ok
        print(f"  {path.name:34s} truth {MOTION_CLASSES[label]:18s} predicted {labels[int(index)]:18s} "
              f"{float(score):6.1%} {'ok' if ok else 'WRONG'}")
    print(f"{correct}/{args.num} correct. Next: vivit classify YOUR_VIDEO.mp4 (the paper's ViViT-B, Kinetics-400; "
          "downloads once) or vivit classify YOUR_VIDEO.mp4 --model vivit_motion --views 1x1 (offline)")
    if scratch is not None:
        scratch.cleanup()
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from vivit.data.video import multi_view_clips
    from vivit.tasks.explain import attention_heatmap, frames_for_tokens, save_attention_grid

    model = load_model_for_cli(args.model, attn_impl="eager", force_download=args.force_download)
    clip = multi_view_clips(args.video, model, (1, 1))[0]
    heat = attention_heatmap(model, clip)
    out = save_attention_grid(frames_for_tokens(model, clip), heat, args.out / f"{args.video.stem}_attention.png",
                              title=f"{args.model}: last-layer spatial attention")
    print(out)
    return 0


class _VersionAction(argparse.Action):
    """``--version``: vivit's version and the torch it runs on, read only when asked (importing torch is slow)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print vivit's version (and torch's) and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        import platform

        from vivit._version import __version__

        print(f"vivit {__version__} (torch {_torch_version()}, Python {platform.python_version()})")
        parser.exit()


def _torch_version() -> str:
    """``torch.__version__`` (with its local part, e.g. ``+cu130``) without importing torch, which takes seconds."""
    import importlib.util
    import re
    from importlib.metadata import PackageNotFoundError, version

    spec = importlib.util.find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:  # torch/version.py is generated at build time: `__version__ = '2.5.1+cu124'`
            text = (Path(folder) / "version.py").read_text()
            found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
        except OSError:
            continue
        if found:
            return found.group(1)
    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


# CPU numbers measured on 2-core machines (docs/guides/performance.md); none on a GPU yet.
CLASSIFY_TIMING = (
    "How long it takes: the default model (ViViT-B, 4x3 = 12 views of 32x224x224) runs about 3-7 s per view on a "
    "2-core CPU in float32, so 40-90 s per video. --dtype bfloat16 is ~3.4x faster on CPUs with AMX (~1.5x with "
    "AVX512-BF16 only); --views 1x1 runs 1 view instead of 12 (the published accuracies are for 4x3); a GPU "
    "(--device cuda) is far faster (benchmarks/gpu.py measures it). The first run downloads the weights (~350 MB) once."
)


STOPPED_EXIT_CODE = EXIT_STATUS["stopped"]  # --stop-after: the run left early, as a killed job would; run again


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from vivit.tasks.evaluate import evaluate_dataset

    report = _dataset_job(args, evaluate_dataset, {})
    if report is None:
        return STOPPED_EXIT_CODE if args.stop_after else EXIT_STATUS["ok"]
    # An unlabelled listing has no accuracy: its summary says so instead of printing "top1 None".
    shown = {k: report[k] for k in ("top1", "top5", "mean_class_accuracy") if report[k] is not None}
    shown |= {k: report[k] for k in ("num_videos", "num_evaluated", "num_failed")}
    unlabelled = "" if report["num_labelled"] else "no labels (predictions only) "
    print(unlabelled + " ".join(f"{k} {v}" for k, v in shown.items()) + f" -> {args.out / 'report.json'}")
    return _report_failures(report["failed"], report["num_videos"])


def _cmd_extract(args: argparse.Namespace) -> int:
    from vivit.tasks.extract import extract_features

    if args.layer is not None and args.token_merging:
        return _usage("extract", "--layer features are one block's tokens, which token merging changes from block "
                                 "to block: drop --token-merging, or --layer for the pooled pre-logits")
    index = _dataset_job(args, extract_features, {"per_clip": args.per_clip, "layer": args.layer},
                         shard_size=args.shard_size)
    if index is None:
        return STOPPED_EXIT_CODE if args.stop_after else EXIT_STATUS["ok"]
    print(f"{_count(index['num_extracted'], 'video')}, {index['dim']}-d features -> {args.out / 'index.json'} "
          f"({_count(len(index['shards']), 'shard')}, {index['num_failed']} failed)")
    return _report_failures(index["failed"], len(index["videos"]))


def _usage(command: str, message: str) -> int:
    """Bad usage found past argparse: one line, exit status 2."""
    print(f"vivit {command}: error: {message}", file=sys.stderr)
    return EXIT_STATUS["usage"]


def _dataset_job(args: argparse.Namespace, job, own: dict[str, object], **more: object):
    """``job`` (``evaluate_dataset`` / ``extract_features``) run with its own settings ``own`` (and ``more``), the
    model and one :class:`~vivit.tasks.run.RunOptions` built from the flags; a resume with other settings than the
    folder's ``run.json`` shows is refused before the model is loaded."""
    import dataclasses

    from vivit.tasks.run import OtherSettings, RunOptions, check_settings

    if os.environ.get("RANK", "0") == "0":  # progress lines on rank 0 (the other ranks only warn)
        logging.getLogger("vivit.tasks").setLevel(logging.INFO)
    int8 = args.dtype == "int8"  # the int8 model is made once the model is loaded; the run records "int8"
    # every flag named as a field (--pattern only when given: the library has the default)
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunOptions)
              if getattr(args, f.name, None) is not None}
    options = RunOptions(**{**fields, "dtype": None if int8 else resolve_dtype(args.dtype, args.device, args.command),
                            "backend": "openvino" if int8 else args.backend})
    try:  # the flags against the folder's run.json: bad usage, found before the model is built
        check_settings(args.out, options, **own)
    except OtherSettings as err:
        raise UsageError(_collapse(err)) from None
    model = _model_from_flags(args)
    if int8:
        options = RunOptions.of(options, {"backend": _int8_backend(args, model, args.command,
                                                                    pre_logits=args.command == "extract")})
    return job(args.listing, model, args.out, options, **own, **more)


def _report_failures(failed: Sequence[dict], total: int) -> int:
    """One stderr line per failed video, at most ``MAX_FAILURE_LINES``; exit status 1 when any failed."""
    for failure in failed[:MAX_FAILURE_LINES]:
        print(f"failed: {failure['path']}: {failure['reason']}", file=sys.stderr)
    if len(failed) > MAX_FAILURE_LINES:
        print(f"... and {len(failed) - MAX_FAILURE_LINES} more failed videos (all of them are in the report)",
              file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {_count(total, 'video')} failed", file=sys.stderr)
    return EXIT_STATUS["failed"] if failed else EXIT_STATUS["ok"]


DATASET_EPILOG = ("exit status: 0 every video done; 1 some videos failed (each named on stderr and in the output "
                  "folder, whose files are complete) or the run failed; 2 bad usage (also flags that the model's "
                  "config or --out's run.json refuse, found before the model loads); 3 stopped by --stop-after")


def _cmd_timeline(args: argparse.Namespace) -> int:
    import time

    from vivit.data.stream import is_url
    from vivit.tasks.timeline import timeline_listing, timeline_video

    logging.getLogger("vivit.tasks.timeline").setLevel(logging.INFO)
    source = args.input
    live = is_url(source)
    listing = not live and (Path(source).is_dir() or Path(source).suffix.lower() in (".csv", ".txt", ".tsv", ".list"))
    _check_timeline_resume(args, listing)
    runtime = _model_runtime(args, "timeline", _model_from_flags(args))
    model = runtime.model
    options = dict(step=args.step, window_stride=args.window_stride, crops=args.crops, batch_size=args.batch_size,
                   top_k=args.top_k, smooth=args.smooth, min_segment=args.min_segment, stop_after=args.stop_after,
                   runtime=runtime.fast or "torch", reuse=args.reuse, max_delay=args.max_delay)
    started = time.perf_counter()
    # A folder or a text/CSV file is a listing; anything else is one video (an unknown kind gets the video's error).
    if not listing:
        def show(record: dict) -> None:  # a live stream: each window's labels as it is classified
            tops = record.get("top") or [t[0] for t in record["top_by_split"]]
            late = f"  [{record['delay']:.1f} s behind live]" if "delay" in record else ""
            skipped = f"  [{record['skipped']} windows skipped to stay live]" if record.get("skipped") else ""
            print(f"{record['start']:9.2f}-{record['end']:9.2f} s  " + ", ".join(
                f"{t['label']} ({t['score']:.1%})" for t in tops[:3]) + late + skipped, flush=True)

        live = live or args.follow is not None
        result = timeline_video(source, model, args.out, on_window=show if live or args.print else None,
                                follow=args.follow, **options)
        results = [] if result is None else [{"path": source, **result}]
    else:
        summary = timeline_listing(source, model, args.out, device=args.device, **options)
        if summary is None:  # stopped, or a rank other than 0 (rank 0 prints every video's outcome)
            return STOPPED_EXIT_CODE if args.stop_after else EXIT_STATUS["ok"]
        results = summary["videos"]
    if not results:
        return STOPPED_EXIT_CODE
    for r in results:
        if r.get("padded"):
            print(f"{r['path']}: shorter than one window: one window of its frames looped, as classify does",
                  file=sys.stderr)
        print(f"{r['path']}: {r['windows']} windows, {r.get('segments', 0)} segments over {r.get('duration', 0):.1f} s "
              f"-> {r['out']}")
        if r.get("skipped"):
            print(f"{r['path']}: {r['skipped']} windows skipped to stay live (the model is slower than the video; "
                  "--max-delay sets how far behind a window may be)")
        if r.get("error"):
            n = r["windows"]
            kept = "" if not n else f" (the {_count(n, 'window')} before it {'is' if n == 1 else 'are'} kept)"
            said = r["error"] if str(r["path"]) in r["error"] else f"{r['path']}: {r['error']}"  # the path once
            print(f"vivit timeline: {said}{kept}", file=sys.stderr)
    seconds, video = time.perf_counter() - started, sum(r.get("duration", 0) for r in results)
    if video > 0:  # what real time means here: below 1, the timeline keeps up with the video
        print(f"real-time factor {seconds / video:.2f} ({seconds:.1f} s for {video:.1f} s of video, this run's "
              "processing time / video duration)")
    return EXIT_STATUS["failed"] if any(r.get("error") for r in results) else 0


def _check_timeline_resume(args: argparse.Namespace, listing: bool) -> None:
    """Refuse, before the model loads, a timeline resume whose flags differ from what ``--out`` recorded (each
    video's folder for a listing); what needs the model (its weights, config, the resolved step) is checked after."""
    from vivit.tasks.run import OtherSettings, check_recorded

    known = {"token_merging": args.token_merging, "drop_static": float(args.drop_static), "crops": args.crops,
             "top_k": args.top_k, "batch_size": args.batch_size}
    if args.backend != "auto":  # "auto" is recorded as what it picked
        known["backend"] = args.backend
    folders = sorted(p for p in args.out.glob("*") if p.is_dir()) if listing and args.out.is_dir() else [args.out]
    try:
        for folder in folders:
            check_recorded(folder, known)
    except OtherSettings as err:
        raise UsageError(_collapse(err)) from None


class UsageError(Exception):
    """Bad usage found past argparse (the flags against the model's config or the ``--out`` folder): one line, exit
    status 2."""


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless it has no default or already says which."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


# vivit.data.KINETICS_PATTERN, written out so that building the parser imports no torch (a test holds them equal)
KINETICS_PATTERN_HELP = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
MAX_WORKERS = 16  # vivit.tasks.run.MAX_WORKERS, written out for the same reason (a test holds them equal)
MAX_FAILURE_LINES = 20  # failed videos named on stderr; the report lists every one


def _add_task_parsers(sub: argparse._SubParsersAction) -> None:
    """``classify``, ``demo`` and ``explain``."""
    p = sub.add_parser("classify", help="classify videos (logits averaged over temporal x spatial views)",
                       description="Classify videos: logits averaged over temporal x spatial views. " + CLASSIFY_TIMING)
    p.add_argument("videos", nargs="+", type=Path, help="video files")
    _add_model_args(p)
    p.add_argument("--views", default=None,
                   help="temporal x spatial views, e.g. 4x3 (Kinetics) or 1x1 (default: the model's eval_views)")
    p.add_argument("--top-k", type=_integer(), default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per video")
    p.add_argument("--batch-size", type=_integer(), default=4, help="views per forward pass")
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("demo", help="offline: generate motion clips, write them as videos, classify them")
    p.add_argument("--out", type=Path, help="folder for the clips (default: a new temporary folder)")
    p.add_argument("--num", type=_integer(), default=6, help="how many clips")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("explain", help="draw the model's last-layer spatial attention over a video's frames (PNG)")
    p.add_argument("video", type=Path)
    p.add_argument("--out", type=Path, default=Path("."), help="folder for <video>_attention.png")
    p.add_argument("--model", default=DEFAULT_MODEL, help="tag, hf-hub:org/repo or folder")
    p.add_argument("--force-download", action="store_true", help="download the weights again even when cached")
    p.set_defaults(func=_cmd_explain)


def _add_dataset_parsers(sub: argparse._SubParsersAction) -> None:
    """``evaluate`` and ``extract``, with the arguments both take; defaults shown in ``--help``."""
    for name, func, summary, description in (
        ("evaluate", _cmd_evaluate, "evaluate on a labelled listing of videos: predictions.jsonl, report.json "
         "(top-1/5, per class, failures), confusion matrix; resumable, torchrun-ready", "Evaluate a model on every "
         "video of a listing with multi-view averaging, as the paper reports its accuracies: writes predictions.jsonl, "
         "logits.npy, report.json (top-1/5, mean class accuracy, failed videos), per_class.csv and confusion.png into "
         "--out. A run stopped midway continues when started again with the same inputs and --out; torchrun "
         "--nproc_per_node N -m vivit evaluate ... splits the videos over N processes."),
        ("extract", _cmd_extract, "pooled pre-logits features of a listing into safetensors shards + index.json",
         "Extract pooled pre-logits features (or the token mean of one block with --layer) of every video of a "
         "listing, averaged over the views or one per view (--per-clip), into safetensors shards under --out/shards "
         "and --out/index.json (vivit.tasks.extract.load_features reads them back). Resumable and torchrun-ready like "
         "evaluate.")):
        p = sub.add_parser(name, help=summary, description=description, epilog=DATASET_EPILOG,
                           formatter_class=_DefaultsFormatter)
        p.add_argument("listing", type=Path,
                       help="CSV (path,label), Kinetics CSV, folder per class, or a list of files")
        _add_model_args(p, required=True)
        p.add_argument("--out", type=Path, required=True, help="output folder (a run stopped midway is continued)")
        p.add_argument("--views", default=None, help="temporal x spatial views, e.g. 4x3 (default: the model's)")
        p.add_argument("--batch-size", type=_integer(), default=16,
                       help="views per forward pass (views of several videos share one)")
        p.add_argument("--workers", type=_integer(0, MAX_WORKERS), default=2, help="decoding processes per rank")
        p.add_argument("--compile", action="store_true", help="torch.compile the model")
        p.add_argument("--decoder", choices=("auto", "pyav", "torchcodec"), default="auto",
                       help="video decoder (auto: PyAV when installed, else torchcodec)")
        p.add_argument("--video-root", type=Path, help="folder of a Kinetics CSV's videos (default: the CSV's folder)")
        p.add_argument("--pattern", default=None, help="file name of a Kinetics CSV row, str.format over its columns "
                                                       f"(default: {KINETICS_PATTERN_HELP})")
        p.add_argument("--log-every", type=_integer(), default=100, help="videos between progress lines (no TTY)")
        p.add_argument("--stop-after", type=_integer(), help="leave after N videos per rank (exit status 3), as a "
                                                                "killed job would; for testing resumption")
        p.set_defaults(func=func)
    p.add_argument("--per-clip", action="store_true", help="one feature per view instead of the mean over views")
    p.add_argument("--layer", type=int, help="token mean of this block's output instead of the pre-logits")
    p.add_argument("--shard-size", type=_integer(), default=1024, help="videos per shard file")


def _add_timeline_parser(sub: argparse._SubParsersAction) -> None:
    """The ``timeline`` sub-command: sliding windows over a whole video, a stream or a listing."""
    p = sub.add_parser("timeline", help="what happens when: slide the model's clip over a whole video (or every video "
                                        "of a listing): windows.jsonl, segments.json, timeline.png; resumable",
                       description="Slide the model's clip over a whole video, a stream URL, a file still being "
                       "written (--follow) or every video of a listing, in memory bounded by a few windows: writes "
                       "windows.jsonl (each window's top labels), segments.json (runs of one label) and timeline.png "
                       "into --out. A stopped run continues when started again with the same inputs and --out.",
                       epilog="exit status: 0 ok; 1 a video failed midway (its earlier windows are kept), stalled "
                       "(VIVIT_DOWNLOAD_TIMEOUT), or the model or --out was refused; 2 bad usage (also flags that the "
                       "model's config or --out's run.json refuse, found before the model loads); 3 stopped by "
                       "--stop-after; 130 interrupted (the finished windows and their segments are kept)")
    p.add_argument("input", help="a video file, a stream URL (rtsp://, http://), or a listing of videos")
    _add_model_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (a run stopped midway is continued)")
    p.add_argument("--step", type=_seconds, help="seconds between window starts (default: half a window)")
    p.add_argument("--window-stride", type=_integer(1, 1000), help="frames between a window's frames (default: the "
                                                              "model's frame stride)")
    p.add_argument("--crops", type=int, choices=(1, 3), default=1, help="spatial views per window")
    p.add_argument("--top-k", type=_integer(), default=5, help="labels per window")
    p.add_argument("--smooth", type=_integer(), default=1, help="average scores over N windows before segmenting")
    p.add_argument("--min-segment", type=functools.partial(_seconds, zero=True), default=0.0,
                   help="seconds: shorter segments join a neighbour")
    p.add_argument("--batch-size", type=_integer(1, 256), default=8, help="windows per forward pass")
    p.add_argument("--print", action="store_true", help="print each window's labels as it is classified (always "
                                                        "for a stream URL)")
    p.add_argument("--follow", type=_seconds, metavar="SECONDS", help="the video is still being written (Matroska, "
                   "MPEG-TS): at its end, wait up to SECONDS for more; windows are printed as they come")
    p.add_argument("--max-delay", type=_seconds, metavar="SECONDS", help="a stream URL or --follow: skip windows "
                   "further than this behind the live edge, so a model slower than the video stays live (default: "
                   "--batch-size steps plus one window)")
    p.add_argument("--stop-after", type=_integer(), help="leave at the end of the batch that reaches N windows "
                   "(whole batches of --batch-size; exit status 3), as a killed run would; for testing resumption")
    p.add_argument("--no-reuse", dest="reuse", action="store_false", help="compute every window whole (Model 2 "
                   "otherwise encodes each tubelet-time slice once for all windows that hold it)")
    p.set_defaults(func=_cmd_timeline)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``vivit`` command."""
    parser = argparse.ArgumentParser(prog="vivit",
                                     description="ViViT video models: classify, demo, explain, list, convert, "
                                                 "evaluate, extract, timeline",
                                     epilog="exit status: 0 ok; 1 a video, model or file failed (one line each on "
                                            "stderr); 2 bad usage; 3 stopped by --stop-after; 130 interrupted")
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (downloads, conversions)")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_task_parsers(sub)

    p = sub.add_parser("list", help="list architectures (or pretrained tags)")
    p.add_argument("filter", nargs="?", help="fnmatch pattern, e.g. 'vivit_b*'")
    p.add_argument("--pretrained", action="store_true", help="list arch.tag names with released weights")
    p.add_argument("--json", action="store_true", help="print configs as JSON")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("convert", help="turn any supported source into a Hub-ready folder (safetensors, config, card)")
    p.add_argument("source", help="a tag (vivit_b_16x2_fe.k400), hf-hub:org/repo, URL, file or folder")
    p.add_argument("out_dir", type=Path, help="folder to write")
    p.add_argument("--arch", help="registered architecture the weights belong to (for bare weight files)")
    p.add_argument("--scenic-config", help="reference config as JSON (for reference checkpoints)")
    p.add_argument("--img-size", type=int, help="frame size the model takes (resamples positional embeddings)")
    p.add_argument("--num-frames", type=int, help="clip length the model takes (resamples positional embeddings)")
    p.add_argument("--num-classes", type=int, help="head size when the weights' head is not wanted")
    p.add_argument("--repo-id", help="Hub repo the folder is meant for (printed upload command)")
    p.add_argument("--to", choices=("vivit", "transformers"), default="vivit", help="folder format: vivit's (loads in "
                   "vivit, timm and transformers' Auto classes) or transformers' own VivitForVideoClassification")
    p.add_argument("--force-download", action="store_true", help="download the weights again even when cached")
    p.set_defaults(func=_cmd_convert)

    _add_dataset_parsers(sub)
    _add_timeline_parser(sub)
    return parser


def _for_the_shell(message: str) -> str:
    """Library errors name Python calls; on the command line the matching command is the useful hint."""
    return message.replace("vivit.list_models()", "`vivit list`")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vivit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "drop_static", 0) and args.backend == "openvino":
        parser.error("--drop-static keeps a different number of tokens per clip, which a converted OpenVINO graph "
                     "cannot: use --backend torch (or auto)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        if problem := _int8_problem(args):
            return _usage(args.command, problem)
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the try
        return rc
    except BrokenPipeError:
        # The reader left (`vivit list --json | head`): stop quietly, as Unix tools do. Python's docs recipe: point
        # stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as err:
        return _usage(args.command, str(err))
    except KeyboardInterrupt:  # Ctrl-C: the shell's convention, 128 + SIGINT, without a traceback
        return EXIT_STATUS["interrupted"]
    except MemoryError:  # e.g. a file declaring more data than this machine holds, past every header check
        print(f"vivit {args.command}: out of memory; the input needs more than this machine can hold (free memory, "
              "or use a smaller input or --batch-size)", file=sys.stderr)
        return EXIT_STATUS["failed"]
    except (ValueError, OSError, RuntimeError, ImportError) as err:  # OSError covers FileNotFoundError, permissions
        print(f"vivit {args.command}: {_for_the_shell(_collapse(err))}", file=sys.stderr)
        return EXIT_STATUS["failed"]


if __name__ == "__main__":
    sys.exit(main())
