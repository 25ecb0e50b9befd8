"""Fetching files: cached ``http(s)`` downloads and Hugging Face Hub files, with one clear error when they fail.

Downloads go to a temporary file in the cache folder and are renamed into place only when complete, so a killed or
truncated download never leaves a cache entry. ``huggingface_hub`` is imported inside the functions that need it:
``import vivit`` does not load it.

Environment:
    VIVIT_CACHE: cache folder of :func:`download_url` (default ``~/.cache/vivit``). Hub files use the Hugging Face
        cache (``HF_HOME`` / ``HF_HUB_CACHE``).
    HF_HUB_OFFLINE, VIVIT_OFFLINE: ``1`` serves cached files only and never touches the network.
    VIVIT_DOWNLOAD_TIMEOUT: seconds (default 60) a URL download may wait for data, and the window over which it must
        average ``MIN_DOWNLOAD_RATE``: a server that trickles bytes is abandoned instead of holding the call forever.
    HF_HUB_ETAG_TIMEOUT: seconds the Hub's first answer may take (huggingface_hub's setting, default 10).

Cache trust: every downloaded file gets a record (size and sha256) written atomically beside it before the file is
renamed into place, and checked whenever the entry is reused; Hub blobs are checked against the digest they are named
by (their ETag). A file that does not match is never used: the error names the cache entry to delete.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vivit._version import __version__
from vivit.files import first_line, temporary_sibling, write_atomic
from vivit.progress import progress_bar
from vivit.weights.read import WEIGHTS_NAME, WEIGHTS_NAMES, file_sha256, remember_sha256

_logger = logging.getLogger(__name__)

HUB_PREFIXES = ("hf-hub:", "hf_hub:")  # timm accepts the underscore spelling too
DOWNLOAD_TIMEOUT = 60.0  # default of VIVIT_DOWNLOAD_TIMEOUT
MIN_DOWNLOAD_RATE = 1024  # bytes/s a download must average over each timeout window
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_RECORD_SUFFIX = ".record.json"
_STALE_PART_SECONDS = 24 * 3600
_HUB_PART = re.compile(r"^[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?$")


# ----------------------------------------------------------------------------------------------- plain URLs
class CacheIntegrityError(RuntimeError):
    """A downloaded or cached file does not match its record or digest (never a missing file)."""


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


def download_timeout() -> float:
    """``$VIVIT_DOWNLOAD_TIMEOUT`` seconds, else ``DOWNLOAD_TIMEOUT``."""
    text = os.environ.get("VIVIT_DOWNLOAD_TIMEOUT", "").strip()
    try:
        value = float(text) if text else DOWNLOAD_TIMEOUT
    except ValueError:
        raise ValueError(f"VIVIT_DOWNLOAD_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"VIVIT_DOWNLOAD_TIMEOUT must be positive, got {text!r}")
    return value


def record_path(dest: Path) -> Path:
    """The record (size, sha256, URL) kept beside the cache entry ``dest``."""
    return dest.with_name(dest.name + _RECORD_SUFFIX)


def download_url(url: str, cache_dir: str | Path | None = None, *, sha256: str | None = None,
                 timeout: float | None = None, force_download: bool = False) -> Path:
    """Download ``url`` once into the cache and return the cached file.

    Args:
        url: An ``http(s)://`` URL.
        cache_dir: Cache folder; default ``$VIVIT_CACHE`` or ``~/.cache/vivit``.
        sha256: Expected hex digest (or a prefix of it) of the file; a mismatch keeps nothing.
        timeout: Seconds to wait for the connection or the next data, and the window over which the download must
            average ``MIN_DOWNLOAD_RATE`` bytes/s; default ``$VIVIT_DOWNLOAD_TIMEOUT`` or 60.
        force_download: Download again even when the file is cached (replacing the entry).

    Returns:
        The cached file (see :func:`cache_path`), reused without network access on later calls once its size and
        sha256 match the record written with it.

    Raises:
        ValueError: ``url`` is not http(s).
        RuntimeError: Offline with no cached copy, the download failed, was incomplete or too slow, or the cached file
            no longer matches its record (the message says which cache entry to delete).
    """
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"download_url needs an http(s) URL, got {url!r}; pass local files to vivit.load_pretrained")
    timeout = download_timeout() if timeout is None else float(timeout)
    dest = cache_path(url, cache_dir)
    if dest.is_file() and not force_download:
        _check_cache_entry(dest, url, sha256)
        return dest
    if is_offline():
        raise RuntimeError(f"offline mode (HF_HUB_OFFLINE / VIVIT_OFFLINE is set) and {url} is not cached. "
                           + _manual_hint(url, dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest)
    tmp = temporary_sibling(dest, tmp_suffix=".part")
    try:
        received, expected, digest = _fetch(url, tmp, timeout, desc=dest.name)
        if expected is not None and received != expected:
            raise RuntimeError(f"download of {url} is incomplete: the connection closed after {received} of "
                               f"{expected} bytes; nothing was cached. Retry, or " + _lower(_manual_hint(url, dest)))
        if sha256 is not None and not digest.startswith(sha256.lower()):
            raise RuntimeError(f"{url} has sha256 {digest}, expected {sha256}; nothing was cached. The file changed "
                               "on the server or was corrupted in transit.")
        # The record goes first: a kill between the two renames leaves a record without its file (downloaded
        # again next time) or an old file under a new record (refused), never an unchecked entry.
        record = json.dumps({"url": url, "size": received, "sha256": digest})
        write_atomic(record_path(dest), lambda p: p.write_text(record), tmp_suffix=".part")
        os.replace(tmp, dest)
        remember_sha256(dest, digest)
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


def _check_cache_entry(dest: Path, url: str, sha256: str | None) -> None:
    """Refuse a cached file that no longer matches its record or the expected digest, naming the entry to delete."""
    record: dict[str, Any] = {}
    if record_path(dest).is_file():
        try:
            record = json.loads(record_path(dest).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {"size": None}  # a damaged record: the entry cannot be trusted
    if not record and sha256 is None:
        return  # placed by hand (as the offline hints suggest): nothing to check it against
    size = dest.stat().st_size
    problem = None
    if record and record.get("size") != size:
        problem = f"it holds {size} bytes, the download recorded {record.get('size')}"
    else:
        digest = file_sha256(dest)
        if record and record.get("sha256") != digest:
            problem = f"its sha256 is {digest}, the download recorded {record.get('sha256')}"
        elif sha256 is not None and not digest.startswith(sha256.lower()):
            problem = f"its sha256 is {digest}, the release's is {sha256}"
    if problem:
        raise CacheIntegrityError(
            f"the cached copy of {url} is damaged or was replaced ({problem}): delete this cache entry ({dest} and "
            f"{record_path(dest).name}) or pass force_download=True (CLI: --force-download) to download it again")


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
    """Stream ``url`` into ``tmp``; returns (bytes received, Content-Length or None, sha256 hex).

    The socket timeout only bounds each wait for data; a server sending a byte every few seconds would keep it alive
    forever, so each ``timeout``-second window must also bring ``MIN_DOWNLOAD_RATE * timeout`` bytes (or the end).
    """
    request = urllib.request.Request(url, headers={"User-Agent": f"vivit/{__version__}"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        window_start, window_bytes = time.monotonic(), 0
        with _Progress(expected, desc) as update:
            while chunk := response.read1(_CHUNK):  # read1: returns what has arrived, so the clock is checked
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                window_bytes += len(chunk)
                update(len(chunk))
                elapsed = time.monotonic() - window_start
                if elapsed >= timeout:
                    if window_bytes < MIN_DOWNLOAD_RATE * elapsed:
                        raise TimeoutError(f"only {window_bytes} bytes arrived in {elapsed:.1f} s (minimum "
                                           f"{MIN_DOWNLOAD_RATE} bytes/s, VIVIT_DOWNLOAD_TIMEOUT={timeout:g}); the "
                                           "download was abandoned")
                    window_start, window_bytes = time.monotonic(), 0
    return received, expected, digest.hexdigest()


class _Progress:
    """A tqdm bar on an interactive stderr, otherwise nothing (logs and CI stay clean)."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.bar: Any = progress_bar(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                                     file=sys.stderr)

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


def _check_revision(revision: str | None) -> None:
    if revision is not None and (problem := revision_problem(revision)):
        raise ValueError(f"invalid revision {revision!r}: {problem}")


def hf_hub_file(repo_id: str, filename: str, revision: str | None = None, *,
                cache_dir: str | Path | None = None, force_download: bool = False, sha256: str | None = None) -> Path:
    """Fetch one file of a Hub repo through the Hugging Face cache (``huggingface_hub.hf_hub_download``).

    A file not yet cached is first asked for once, without huggingface_hub's retries (an unreachable Hub is one error
    at once, not half a minute of retry warnings). The file is then checked against the digest its blob is named by
    (the ETag: sha256 for LFS files, git's blob sha1 otherwise), so content that changed between the metadata request
    and the download, or a cached blob damaged since, is never used.

    Args:
        repo_id: ``"org/repo"``.
        filename: Path of the file inside the repo.
        revision: Branch, tag or commit; default ``main``.
        cache_dir: Overrides the Hugging Face cache folder.
        force_download: Download again even when cached.
        sha256: Expected hex digest of the file (a release's known digest).

    Raises:
        FileNotFoundError: The repo, revision or file does not exist (or the repo is private).
        RuntimeError: Offline without a cached copy, the Hub is unreachable, access is refused, or the file does not
            match its digest.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    _check_revision(revision)
    rev = revision or constants.DEFAULT_REVISION
    url = hf_hub_url(repo_id, filename, revision=rev)
    where = f"Hub repo {repo_id!r} (revision {rev!r})"
    manual = (f"Download it elsewhere (`hf download {repo_id} {filename} --revision {rev}`, or {url}) and pass the "
              "local file or folder to vivit.load_pretrained(model, path).")
    offline = constants.is_offline_mode() or _env_true("VIVIT_OFFLINE")
    try:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=rev)
        fresh = force_download or not isinstance(cached, str)
        if fresh and not offline:
            # One metadata request with no retries: huggingface_hub retries a missing file five times with backoff.
            get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT, library_name="vivit",
                                 library_version=__version__, retry_on_errors=False)
        path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, library_name="vivit",
                                    library_version=__version__, local_files_only=_env_true("VIVIT_OFFLINE"),
                                    force_download=force_download))
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
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        if offline:
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
        raise RuntimeError(f"cannot get {filename!r} from {where}: the Hub at {constants.ENDPOINT} could not be "
                           f"reached ({type(err).__name__}: {first_line(err)}); the network may be unreachable. "
                           + manual) from None
    _check_hub_blob(path, f"{filename!r} from {where}", fresh, sha256)
    return path


def _check_hub_blob(path: Path, what: str, fresh: bool, sha256: str | None) -> None:
    """The file must hash to the ETag its blob is named by (and to ``sha256`` when given)."""
    blob = Path(os.path.realpath(path))
    etag = blob.name
    problem = None
    if _HEX64.match(etag) or sha256 is not None:
        digest = file_sha256(blob)
        if _HEX64.match(etag) and digest != etag:
            problem = f"its sha256 is {digest}, the Hub's ETag {etag}"
        elif sha256 is not None and not digest.startswith(sha256.lower()):
            problem = f"its sha256 is {digest}, the release's is {sha256}"
    elif _HEX40.match(etag) and blob.stat().st_size < (64 << 20):
        # huggingface_hub (file_download.py): "An object's ETag is: its git-sha1 if stored in git, or its sha256 if
        # stored in git-lfs"; small files such as config.json are stored in git.
        from huggingface_hub.utils.sha import git_hash

        found = git_hash(blob.read_bytes())
        if found != etag:
            problem = f"its git blob sha1 is {found}, the Hub's ETag {etag}"
    if problem is None:
        return
    if fresh:  # just downloaded: the content changed between the metadata request and the download
        for p in (path, blob):
            p.unlink(missing_ok=True)
        raise CacheIntegrityError(f"{what} changed while it was downloaded ({problem}); nothing was cached. Retry; "
                                  "if it persists the server or a proxy is serving inconsistent content.")
    raise CacheIntegrityError(
        f"the cached copy of {what} is damaged or was replaced ({problem}): delete this cache entry ({blob} and "
        f"{path}) or pass force_download=True (CLI: --force-download) to download it again")


def transport_errors() -> tuple[type[Exception], ...]:
    """Request errors (connection, timeout, too many redirects) of the HTTP client huggingface_hub uses (httpx2 in
    2.x, httpx before)."""
    for module in ("httpx2", "httpx"):  # older huggingface_hub releases use httpx
        try:
            return (__import__(module).RequestError,)
        except ImportError:
            continue
    return ()  # neither client: nothing more to translate; the original error propagates


def hub_weights_file(repo_id: str, revision: str | None = None, *, force_download: bool = False,
                     sha256: str | None = None) -> Path:
    """A Hub model repo's weights: ``model.safetensors``, else the older ``pytorch_model.bin`` (read safely later).

    ``sha256`` is the release digest of the safetensors file. Offline, a missing safetensors file is a
    ``RuntimeError`` ("not in the cache") and a cached pickle is still found; a damaged or changing file is an error,
    not a missing one. The first file's error is raised when neither exists.
    """
    first: Exception | None = None
    for name in WEIGHTS_NAMES:
        try:
            return hf_hub_file(repo_id, name, revision, force_download=force_download,
                               sha256=sha256 if name == WEIGHTS_NAME else None)
        except CacheIntegrityError:
            raise
        except (FileNotFoundError, RuntimeError) as missing:
            first = first or missing
    raise first from None
