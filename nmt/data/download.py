"""Turn a corpus location (a local path or a URL) into a local file: mirror first, then the download cache,
then the network. Downloads are written to a temporary file and renamed only once complete and verified,
so an interrupted transfer or a checksum mismatch never leaves a file that looks usable."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from nmt.config import is_url
from nmt.errors import DataError, DownloadError
from nmt.fileio import sha256_of
from nmt.progress import progress_bar

log = logging.getLogger(__name__)

CHUNK = 1 << 16


def _verify(path: Path, expected: str | None, origin: str) -> None:
    if expected and sha256_of(path) != expected.lower():
        raise DownloadError(f"{origin}: sha256 mismatch for {path} (expected {expected})")


def _url_basename(url: str) -> str:
    name = Path(urlparse(url).path).name
    if not name:
        raise DataError(f"{url}: the URL does not end in a file name")
    return name


def cache_path(url: str, download_dir: Path) -> Path:
    """Where a URL is cached: its file name behind a short hash of the whole URL (two URLs may share a name)."""
    tag = hashlib.sha1(url.encode()).hexdigest()[:10]
    return download_dir / f"{tag}_{_url_basename(url)}"


def download(url: str, target: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download `url` to `target` atomically, with a progress bar; verify `sha256` when given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with progress_bar(total=total, unit="B", unit_scale=True, desc=f"download {target.name}",
                              leave=False) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            if total is not None and received != total:
                raise DownloadError(f"{url}: transfer interrupted after {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        _verify(tmp, sha256, url)
        os.replace(tmp, target)
    except DownloadError:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{url}: download failed ({err})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def fetch(
    location: str,
    download_dir: Path,
    mirrors: list[Path] = (),  # type: ignore[assignment]
    mirror_subdir: str | None = None,
    sha256: str | None = None,
) -> Path:
    """Return a local path for `location`: itself if local, else a mirror copy, a cached copy or a download."""
    if not is_url(location):
        path = Path(location)
        if not path.exists():
            raise DataError(f"{location}: file not found")
        return path
    name = _url_basename(location)
    for mirror in mirrors:
        candidate = mirror / mirror_subdir / name if mirror_subdir else mirror / name
        if candidate.is_file():
            _verify(candidate, sha256, location)
            log.info("using mirror copy %s for %s", candidate, location)
            return candidate
    cached = cache_path(location, download_dir)
    if cached.is_file():
        _verify(cached, sha256, location)
        return cached
    log.info("downloading %s", location)
    return download(location, cached, sha256)
