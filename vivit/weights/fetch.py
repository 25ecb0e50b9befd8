"""Fetching files: cached ``http(s)`` downloads and Hugging Face Hub files, with one clear error when they fail.

Downloads go to a temporary file in the cache folder and are renamed into place only when complete, so a killed or
truncated download never leaves a cache entry. ``huggingface_hub`` is imported inside the functions that need it:
``import vivit`` does not load it.

Environment:
    VIVIT_CACHE: cache folder of :func:`download_url` (default ``~/.cache/vivit``). Hub files use the Hugging Face
        cache (``HF_HOME`` / ``HF_HUB_CACHE``).
    HF_HUB_OFFLINE, VIVIT_OFFLINE: ``1`` serves cached files only and never touches the network.
    VIVIT_DOWNLOAD_TIMEOUT: seconds (default 60) a URL download may wait for data, and the window over which a URL or
        Hub download must average ``MIN_DOWNLOAD_RATE``: a server that trickles bytes is abandoned instead of holding
        the call forever.
    HF_HUB_ETAG_TIMEOUT: seconds the Hub's first answer may take (huggingface_hub's setting, default 10).
    HF_HUB_DOWNLOAD_TIMEOUT: seconds a Hub download may wait for the next data (huggingface_hub's setting, default
        10; it retries a stalled read a few times).

Cache trust: every downloaded file gets a record (size and sha256) written atomically beside it before the file is
renamed into place, and checked whenever the entry is reused; Hub blobs are checked against the digest they are named
by (their ETag). A file that does not match is never used: the error names the cache entry to delete.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import http.client
import json
import logging
import os
import re
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vivit._version import __version__
from vivit.files import env_seconds, first_line, temporary_sibling, write_atomic
from vivit.progress import progress_bar
from vivit.weights.read import WEIGHTS_NAME, WEIGHTS_NAMES, file_sha256, remember_sha256
from vivit.weights.source import parse_hub_name, revision_problem  # noqa: F401 (parse_hub_name: re-exported)

_logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = 60.0  # default of VIVIT_DOWNLOAD_TIMEOUT
MIN_DOWNLOAD_RATE = 1024  # bytes/s a download must average over each timeout window
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_RECORD_SUFFIX = ".record.json"
_STALE_PART_SECONDS = 24 * 3600


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
    return env_seconds("VIVIT_DOWNLOAD_TIMEOUT", DOWNLOAD_TIMEOUT)


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

    The socket timeout bounds each wait for data, and :class:`_RateGuard` the rate (a trickle is abandoned).
    """
    request = urllib.request.Request(url, headers={"User-Agent": f"vivit/{__version__}"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        guard = _RateGuard(timeout)
        with _Progress(expected, desc) as update:
            while chunk := response.read1(_CHUNK):  # read1: returns what has arrived, so the clock is checked
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                update(len(chunk))
                guard.arrived(len(chunk))
    return received, expected, digest.hexdigest()


class _RateGuard:
    """Each ``timeout``-second window of a download must bring ``MIN_DOWNLOAD_RATE`` bytes/s on average (or end).

    A socket timeout only bounds each wait for data: a server that sends a byte every few seconds keeps it alive
    forever. This is checked as data arrives, so a trickle is abandoned about ``timeout`` seconds into it.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.start, self.bytes = time.monotonic(), 0

    def arrived(self, n: int) -> None:
        """Count ``n`` more bytes; raises ``TimeoutError`` when the window closes below the minimum rate."""
        self.bytes += n
        elapsed = time.monotonic() - self.start
        if elapsed < self.timeout:
            return
        if self.bytes < MIN_DOWNLOAD_RATE * elapsed:
            raise TimeoutError(f"only {self.bytes} bytes arrived in {elapsed:.1f} s (minimum {MIN_DOWNLOAD_RATE} "
                               f"bytes/s, VIVIT_DOWNLOAD_TIMEOUT={self.timeout:g}); the download was abandoned")
        self.start, self.bytes = time.monotonic(), 0


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
def _check_revision(revision: str | None) -> None:
    if revision is not None and (problem := revision_problem(revision)):
        raise ValueError(f"invalid revision {revision!r}: {problem}")


def hf_hub_file(repo_id: str, filename: str, revision: str | None = None, *,
                cache_dir: str | Path | None = None, force_download: bool = False, sha256: str | None = None) -> Path:
    """Fetch one file of a Hub repo through the Hugging Face cache (``huggingface_hub.hf_hub_download``).

    A file not yet cached is first asked for once, without huggingface_hub's retries (an unreachable Hub is one error
    at once). The download must keep the URL downloads' minimum rate (``VIVIT_DOWNLOAD_TIMEOUT``). The file is then
    checked against the digest its blob is named by (the ETag: sha256 for LFS files, git's blob sha1 otherwise).

    Args:
        repo_id, filename, revision: ``"org/repo"``, the file's path in it, and a branch, tag or commit (``main``).
        cache_dir: Overrides the Hugging Face cache folder.
        force_download: Download again even when cached.
        sha256: Expected hex digest of the file (a release's known digest).

    Raises:
        FileNotFoundError: The repo, revision or file does not exist (or the repo is private).
        RuntimeError: Offline without a cached copy, the Hub is unreachable or too slow, access is refused, or the
            file does not match its digest.
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
        with _hub_rate_guard(download_timeout()):
            path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                        library_name="vivit", library_version=__version__,
                                        local_files_only=_env_true("VIVIT_OFFLINE"), force_download=force_download))
    except TimeoutError as err:  # _RateGuard's, raised inside huggingface_hub's read loop, which removed its temp file
        raise RuntimeError(f"cannot get {filename!r} from {where}: {err}; nothing was cached. " + manual) from None
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


def _http_client() -> Any | None:
    """The HTTP client module huggingface_hub uses (httpx2 in 2.x, httpx before), ``None`` without either."""
    for module in ("httpx2", "httpx"):  # older huggingface_hub releases use httpx
        try:
            return __import__(module)
        except ImportError:
            continue
    return None


def transport_errors() -> tuple[type[Exception], ...]:
    """Request errors (connection, timeout, too many redirects) of the HTTP client huggingface_hub uses."""
    client = _http_client()
    return () if client is None else (client.RequestError,)  # neither client: the original error propagates


# The rate window of the Hub download in progress in this context (None: a request that is not vivit's download).
_hub_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar("vivit_hub_timeout", default=None)
# vivit's Hub downloads in progress per hook list (by id) of huggingface_hub's shared session: the hook is on the
# session only while one runs (threads may download at once), so other libraries' requests never meet it.
_hub_guard_lock = threading.Lock()
_hub_guard_users: dict[int, int] = {}


@contextlib.contextmanager
def _hub_rate_guard(timeout: float) -> Iterator[None]:
    """Hub downloads inside the block must keep ``MIN_DOWNLOAD_RATE`` like URL downloads (:class:`_RateGuard`).

    huggingface_hub reads a body in 10 MB chunks, so neither its progress callback nor its per-read socket timeout
    (``HF_HUB_DOWNLOAD_TIMEOUT``) sees a trickle. A response hook on its HTTP session, there only during the block
    and acting only on this context's requests, wraps each GET body, so every network read is counted; the
    ``TimeoutError`` leaves its read loop, which deletes the partial file.
    """
    from huggingface_hub.utils import get_session

    hooks = getattr(get_session(), "event_hooks", {}).get("response")
    if hooks is None:  # huggingface_hub < 1.0 reads with requests: only its per-read timeout applies there
        _logger.debug("this huggingface_hub has no response hooks: its Hub downloads keep no minimum rate")
    else:
        with _hub_guard_lock:
            _hub_guard_users[id(hooks)] = _hub_guard_users.get(id(hooks), 0) + 1
            if _guard_hub_body not in hooks:
                hooks.append(_guard_hub_body)
    token = _hub_timeout.set(timeout)
    try:
        yield
    finally:
        _hub_timeout.reset(token)
        if hooks is not None:
            with _hub_guard_lock:
                left = _hub_guard_users.pop(id(hooks)) - 1
                if left:
                    _hub_guard_users[id(hooks)] = left
                elif _guard_hub_body in hooks:
                    hooks.remove(_guard_hub_body)


def _guard_hub_body(response: Any) -> None:
    timeout = _hub_timeout.get()
    if timeout is not None and response.request.method == "GET":
        response.stream = _guarded_stream_class()(response.stream, timeout)


@functools.cache
def _guarded_stream_class() -> type:
    """A body stream of the HTTP client that counts each network read with a :class:`_RateGuard`."""

    class GuardedStream(_http_client().SyncByteStream):
        def __init__(self, stream: Any, timeout: float) -> None:
            self.stream, self.guard = stream, _RateGuard(timeout)

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.stream:
                self.guard.arrived(len(chunk))
                yield chunk

        def close(self) -> None:
            self.stream.close()

    return GuardedStream


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
