"""Weights sources, parsed once: a zoo name (``arch`` / ``arch.tag``), ``hf-hub:org/repo[@rev]``, an ``http(s)`` URL,
a local file or folder, ``local-dir:PATH``. Every entry point parses its text here and passes the :class:`Source` on.

The lowest layer of the weights path: it reads only the zoo's names and the file system (``huggingface_hub`` is
imported inside :func:`parse_hub_name`, so ``import vivit`` does not load it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vivit.zoo import ARCHS, GENERIC_ARCH, PRETRAINED

HUB_PREFIXES = ("hf-hub:", "hf_hub:")  # timm accepts the underscore spelling too
LOCAL_DIR = "local-dir:"
URL_PREFIXES = ("http://", "https://")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".npz", ".msgpack")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_BARE_REPO = re.compile(r"[\w.-]+/[\w.-]+(@[\w./-]+)?")

Kind = Literal["tag", "name", "hub", "url", "local-dir", "folder", "file", "missing"]


@dataclass(frozen=True)
class Source:
    """Where weights (or a whole model) come from, as one parsed value.

    ``kind``: ``tag`` (a released ``arch.tag`` of ``PRETRAINED``), ``name`` (any other zoo-looking name: an
    architecture, or a name the zoo will refuse with its closest matches), ``hub``, ``url``, ``local-dir`` (the
    explicit ``local-dir:`` prefix), ``folder`` / ``file`` (an existing path) or ``missing`` (a path that does not
    exist). ``text`` is what the user wrote, for messages.
    """

    kind: Kind
    text: str
    name: str | None = None  # tag, name: "arch" or "arch.tag"
    repo_id: str | None = None  # hub
    revision: str | None = None  # hub, when pinned with "@rev"
    url: str | None = None  # url
    path: Path | None = None  # local-dir, folder, file, missing: the path as written (not expanded)

    @property
    def local(self) -> bool:
        """A path on this machine (``local-dir:``, folder, file or a missing path)."""
        return self.kind in ("local-dir", "folder", "file", "missing")


def parse_source(text: str, *, folder_first: bool = False, bare_hub: bool = False) -> Source:
    """Parse a source's text; the only place that decides what a source is.

    Args:
        text: ``arch``, ``arch.tag``, ``hf-hub:org/repo[@rev]`` (or ``hf_hub:``), an ``http(s)`` URL,
            ``local-dir:PATH`` or a path.
        folder_first: An existing folder wins over a zoo name of the same spelling (the CLI's ``--model FOLDER`` and
            ``ViViT.from_pretrained``); otherwise zoo names win.
        bare_hub: ``org/repo[@rev]`` that names no existing path is a Hub repo (``ViViT.from_pretrained``).

    Raises:
        ValueError: An empty text, a malformed ``hf-hub:`` name (see :func:`parse_hub_name`), or an empty
            ``local-dir:``.
    """
    if not text:
        raise ValueError("expected a weights source (a model name, 'hf-hub:org/repo', a URL or a path), got ''")
    if text.startswith(HUB_PREFIXES):
        repo_id, revision = parse_hub_name(text)
        return Source("hub", text, repo_id=repo_id, revision=revision)
    if text.startswith(LOCAL_DIR):
        if not text[len(LOCAL_DIR):]:
            raise ValueError("expected 'local-dir:PATH' (a folder written by save_pretrained), got 'local-dir:'")
        return Source("local-dir", text, path=Path(text[len(LOCAL_DIR):]))
    if text.startswith(URL_PREFIXES):
        return Source("url", text, url=text)
    path = Path(text)
    if folder_first and path.is_dir():
        return Source("folder", text, path=path)
    if text in PRETRAINED:
        return Source("tag", text, name=text)
    if text.partition(".")[0] not in (*ARCHS, GENERIC_ARCH) and (_path_like(text) or path.exists()):
        if bare_hub and _BARE_REPO.fullmatch(text) and not path.exists():
            return parse_source(f"hf-hub:{text}")
        expanded = path.expanduser()
        kind = "folder" if expanded.is_dir() else "file" if expanded.is_file() else "missing"
        return Source(kind, text, path=path)
    return Source("name", text, name=text)


def _path_like(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith((".", "~")) or Path(text).suffix in WEIGHT_SUFFIXES


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``"hf-hub:org/repo[@revision]"`` -> ``("org/repo", "revision" or None)``.

    The repo id is checked by ``huggingface_hub.utils.validate_repo_id`` and must name an organisation.

    Raises:
        ValueError: No ``hf-hub:`` prefix, a repo id that is not ``org/repo``, or an empty revision.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    prefix = next((p for p in HUB_PREFIXES if name.startswith(p)), None)
    if prefix is None:
        raise ValueError(f"expected 'hf-hub:<org>/<repo>[@<revision>]', got {name!r}")
    repo_id, at, revision = name[len(prefix):].partition("@")
    parts = repo_id.split("/")
    try:
        if len(parts) != 2 or not all(parts):
            raise HFValidationError(repo_id)
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(f"invalid Hub repo id {repo_id!r} in {name!r}: expected '<org>/<repo>' of letters, digits, "
                         "'-', '_' and '.' (e.g. 'hf-hub:google/vivit-b-16x2-kinetics400')") from None
    if at and (problem := revision_problem(revision)):
        raise ValueError(f"invalid revision {revision!r} in {name!r}: {problem}; expected a branch, tag or commit "
                         "(a git ref name such as 'main', 'v1.0', 'refs/pr/1', or a 40-hex commit) after '@'")
    return repo_id, (revision if at else None)


def revision_problem(revision: str) -> str | None:
    """Why ``revision`` is not a git ref name (``git check-ref-format`` rules) or a commit; ``None`` when it is one.

    The revision becomes a path inside the Hugging Face cache (``refs/<revision>``): ``..`` and friends would let a
    name, or an endpoint answering for it, write outside the cache.
    """
    if _HEX40.match(revision):
        return None
    if not revision:
        return "it is empty"
    if revision == "@":
        return "'@' alone is not a ref name"
    bad = sorted({c for c in revision if ord(c) < 0x20 or ord(c) == 0x7F or c in " ~^:?*[\\"})
    if bad:
        return f"it contains {''.join(bad)!r}"
    if ".." in revision or "@{" in revision or "//" in revision:
        return "it contains '..', '@{' or '//'"
    if revision.startswith("/") or revision.endswith(("/", ".")):
        return "it starts with '/' or ends with '/' or '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in revision.split("/")):
        return "a component starts with '.' or ends with '.lock'"
    return None
