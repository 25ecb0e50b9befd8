"""The ``vivit`` command: ``list``, ``convert``. No logic of its own: it calls the package's public functions."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_list(args: argparse.Namespace) -> int:
    import vivit
    from vivit.registry import ARCHS, PRETRAINED

    names = vivit.list_models(args.filter or "", pretrained=args.pretrained)
    if args.json:
        rows = [PRETRAINED[n].to_dict() if n in PRETRAINED else {"architecture": n, **ARCHS[n]} for n in names]
        print(json.dumps(rows, indent=2, default=list))
    else:
        print("\n".join(names))
    return 0


def _load_source(args: argparse.Namespace):
    """Build the model ``convert`` saves: a tag / hf-hub name, or a file with --arch or --scenic-config."""
    import vivit
    from vivit.pretrained import detect_format
    from vivit.registry import PRETRAINED

    source = args.source
    overrides = {k: v for k, v in dict(img_size=args.img_size, num_frames=args.num_frames).items() if v is not None}
    if source in PRETRAINED or source.startswith("hf-hub:"):
        return vivit.create_model(source, pretrained=True, **overrides)
    if args.scenic_config:
        config = json.loads(Path(args.scenic_config).read_text())
        config = config.get("scenic_config", config)  # a golden sidecar holds the config under this key
        if "img_size" not in overrides:
            raise SystemExit("vivit convert: --img-size is needed with --scenic-config (reference configs do not "
                             "state the frame size)")
        return vivit.convert.from_scenic(source, config, **overrides)
    if Path(source).is_dir() and detect_format(source) in ("transformers-folder", "vivit-folder"):
        return vivit.create_model(f"local-dir:{source}", pretrained=True, **overrides)
    if not args.arch:
        raise SystemExit(f"vivit convert: {source} needs --arch NAME (a registered architecture) or --scenic-config "
                         "CONFIG.json to say what model the weights belong to")
    kwargs = dict(overrides, **({"num_classes": args.num_classes} if args.num_classes is not None else {}))
    return vivit.load_pretrained(vivit.create_model(args.arch, **kwargs), source)


def _cmd_convert(args: argparse.Namespace) -> int:
    model = _load_source(args)
    out = model.save_pretrained(args.out_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({model.variant}, {params / 1e6:.1f}M params, {model.num_classes} classes): "
          "model.safetensors, config.json, README.md")
    if args.repo_id:
        print(f"publish with: huggingface-cli upload {args.repo_id} {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``vivit`` command."""
    parser = argparse.ArgumentParser(prog="vivit", description="ViViT video models: list, convert")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (downloads, conversions)")
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.set_defaults(func=_cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vivit`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"vivit {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
