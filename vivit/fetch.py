"""Fetching files: cached ``http(s)`` downloads and Hugging Face Hub files, with one clear error when they fail.

Downloads go to a temporary file in the cache folder and are renamed into place only when complete, so a killed or
truncated download never leaves a cache entry. ``huggingface_hub`` is imported inside the functions that need it:
``import vivit`` does not load it.

Environment:
    VIVIT_CACHE: cache folder of :func:`download_url` (default ``~/.cache/vivit``). Hub files use the Hugging Face
        cache (``HF_HOME`` / ``HF_HUB_CACHE``).
    HF_HUB_OFFLINE, VIVIT_OFFLINE: ``1`` serves cached files only and never touches the network.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._version import __version__

_logger = logging.getLogger(__name__)

HUB_PREFIXES = ("hf-hub:", "hf_hub:")  # timm accepts the underscore spelling too
DOWNLOAD_TIMEOUT = 60.0  # seconds without progress before a download is abandoned
_CHUNK = 1 << 20
_STALE_PART_SECONDS = 24 * 3600
_HUB_PART = re.compile(r"^[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?$")


# ----------------------------------------------------------------------------------------------- plain URLs
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``VIVIT_OFFLINE`` forbids network access."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("VIVIT_OFFLINE")


def default_cache_dir() -> Path:
    """``$VIVIT_CACHE``, else ``~/.cache/vivit``."""
    return Path(os.environ.get("VIVIT_CACHE") or Path.home() / ".cache" / "vivit").expanduser()


def cache_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`download_url` keeps ``url``: ``<cache>/<sha256(url)[:16]>-<basename>``.

    The hash keeps URLs with the same basename apart (every reference checkpoint is called ``checkpoint``).
    """
    basename = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
    basename = re.sub(r"[^\w.-]", "_", basename).lstrip(".") or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()).expanduser() / f"{digest}-{basename[:100]}"


def _manual_hint(url: str, dest: Path) -> str:
    return (f"Download {url} on a machine with network access and save it as {dest} (or pass the local file to "
            "vivit.load_pretrained(model, path)).")


def download_url(url: str, cache_dir: str | Path | None = None, *, sha256: str | None = None,
                 timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Download ``url`` once into the cache and return the cached file.

    Args:
        url: An ``http(s)://`` URL.
        cache_dir: Cache folder; default ``$VIVIT_CACHE`` or ``~/.cache/vivit``.
        sha256: Expected hex digest (or a prefix of it) of the file; a mismatch keeps nothing.
        timeout: Seconds to wait for the connection or the next chunk.

    Returns:
        The cached file (see :func:`cache_path`), reused without network access on later calls.

    Raises:
        ValueError: ``url`` is not http(s).
        RuntimeError: Offline with no cached copy, the download failed or was incomplete; the message names the
            URL and where to put a manually downloaded copy.
    """
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"download_url needs an http(s) URL, got {url!r}; pass local files to vivit.load_pretrained")
    dest = cache_path(url, cache_dir)
    if dest.is_file():
        return dest
    if is_offline():
        raise RuntimeError(f"offline mode (HF_HUB_OFFLINE / VIVIT_OFFLINE is set) and {url} is not cached. "
                           + _manual_hint(url, dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        received, expected, digest = _fetch(url, tmp, timeout, desc=dest.name)
        if expected is not None and received != expected:
            raise RuntimeError(f"download of {url} is incomplete: the connection closed after {received} of "
                               f"{expected} bytes; nothing was cached. Retry, or " + _lower(_manual_hint(url, dest)))
        if sha256 is not None and not digest.startswith(sha256.lower()):
            raise RuntimeError(f"{url} has sha256 {digest}, expected {sha256}; nothing was cached. The file changed "
                               "on the server or was corrupted in transit.")
        os.replace(tmp, dest)
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"could not download {url}: the server answered HTTP {err.code} {err.reason}. "
                           + _manual_hint(url, dest)) from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError) as err:
        raise RuntimeError(f"could not download {url} ({type(err).__name__}: {err}); the network may be unreachable. "
                           + _manual_hint(url, dest)) from None
    finally:
        tmp.unlink(missing_ok=True)
    _logger.info("downloaded %s to %s", url, dest)
    return dest


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def _remove_stale_parts(dest: Path) -> None:
    """Delete day-old ``.part`` files of ``dest`` left by killed processes (never cache entries, only litter)."""
    for part in dest.parent.glob(f".{dest.name}.*.part"):
        try:
            if time.time() - part.stat().st_mtime > _STALE_PART_SECONDS:
                part.unlink()
        except FileNotFoundError:  # another process cleaned it up first
            pass


def _fetch(url: str, tmp: Path, timeout: float, desc: str) -> tuple[int, int | None, str]:
    """Stream ``url`` into ``tmp``; returns (bytes received, Content-Length or None, sha256 hex)."""
    request = urllib.request.Request(url, headers={"User-Agent": f"vivit/{__version__}"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        with _Progress(expected, desc) as update:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                update(len(chunk))
    return received, expected, digest.hexdigest()


class _Progress:
    """A tqdm bar on an interactive stderr, otherwise nothing (logs and CI stay clean)."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.bar: Any = None
        if sys.stderr is not None and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional
                return
            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)

    def __enter__(self) -> Callable[[int], None]:
        return self.bar.update if self.bar is not None else (lambda n: None)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------ Hugging Face Hub
def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``"hf-hub:org/repo[@revision]"`` -> ``("org/repo", "revision" or None)``.

    Raises:
        ValueError: No ``hf-hub:`` prefix, a repo id that is not ``org/repo``, or an empty revision.
    """
    prefix = next((p for p in HUB_PREFIXES if name.startswith(p)), None)
    if prefix is None:
        raise ValueError(f"expected 'hf-hub:<org>/<repo>[@<revision>]', got {name!r}")
    repo_id, at, revision = name[len(prefix):].partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_HUB_PART.match(p) and ".." not in p and "--" not in p for p in parts):
        raise ValueError(f"invalid Hub repo id {repo_id!r} in {name!r}: expected '<org>/<repo>' of letters, digits, "
                         "'-', '_' and '.' (e.g. 'hf-hub:google/vivit-b-16x2-kinetics400')")
    if at and (not revision or any(c.isspace() for c in revision)):
        raise ValueError(f"invalid revision {revision!r} in {name!r}: expected a branch, tag or commit after '@'")
    return repo_id, (revision if at else None)


def hf_hub_file(repo_id: str, filename: str, revision: str | None = None, *,
                cache_dir: str | Path | None = None) -> Path:
    """Fetch one file of a Hub repo through the Hugging Face cache (``huggingface_hub.hf_hub_download``).

    Args:
        repo_id: ``"org/repo"``.
        filename: Path of the file inside the repo.
        revision: Branch, tag or commit; default ``main``.
        cache_dir: Overrides the Hugging Face cache folder.

    Raises:
        FileNotFoundError: The repo, revision or file does not exist (or the repo is private).
        RuntimeError: Offline without a cached copy, the Hub is unreachable, or access is refused.
    """
    from huggingface_hub import constants, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or constants.DEFAULT_REVISION
    url = hf_hub_url(repo_id, filename, revision=rev)
    where = f"Hub repo {repo_id!r} (revision {rev!r})"
    manual = (f"Download it elsewhere (`hf download {repo_id} {filename} --revision {rev}`, or {url}) and pass the "
              "local file or folder to vivit.load_pretrained(model, path).")
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, library_name="vivit",
                               library_version=__version__, local_files_only=_env_true("VIVIT_OFFLINE"))
    except RemoteEntryNotFoundError:
        raise FileNotFoundError(f"{where} has no file {filename!r} ({url} answered 404). Check the file name; "
                                "vivit folders hold model.safetensors and config.json.") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"Hub repo {repo_id!r} has no revision {rev!r}; check the branch, tag or commit "
                                "after '@'.") from None
    except GatedRepoError:
        raise RuntimeError(f"Hub repo {repo_id!r} is gated: accept its terms at {constants.ENDPOINT}/{repo_id} and "
                           "log in (`hf auth login` or HF_TOKEN). " + manual) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"Hub repo {repo_id!r} was not found at {constants.ENDPOINT} (or it is private and "
                                "you are not logged in: `hf auth login` or HF_TOKEN). Check the name.") from None
    except LocalEntryNotFoundError as err:
        if constants.is_offline_mode() or _env_true("VIVIT_OFFLINE"):
            reason = "offline mode (HF_HUB_OFFLINE / VIVIT_OFFLINE is set) and the file is not in the Hugging Face " \
                     "cache"
        else:
            cause = err.__cause__ or err
            reason = (f"the Hub at {constants.ENDPOINT} could not be reached ({type(cause).__name__}: "
                      f"{first_line(cause)}); the network may be unreachable, and the file is not cached")
        raise RuntimeError(f"cannot get {filename!r} from {where}: {reason}. " + manual) from None
    except HfHubHTTPError as err:
        raise RuntimeError(f"cannot get {filename!r} from {where}: the Hub answered {first_line(err)}. "
                           "If the repo is private, log in (`hf auth login` or HF_TOKEN). " + manual) from None
    except transport_errors() as err:
        raise RuntimeError(f"cannot get {filename!r} from {where}: {type(err).__name__}: {first_line(err)}; the "
                           "network may be unreachable. " + manual) from None
    return Path(path)


def transport_errors() -> tuple[type[Exception], ...]:
    """Connection/timeout errors of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx before)."""
    for module in ("httpx2", "httpx"):  # older huggingface_hub releases use httpx
        try:
            return (__import__(module).TransportError,)
        except ImportError:
            continue
    return ()  # neither client: nothing more to translate; the original error propagates


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
