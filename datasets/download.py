"""Official dataset files: where they come from, their checksums, download and extraction.

A file is used only once it is known to be the official one:
- downloaded: streamed into a temporary file next to its destination, its md5
  compared with the published one, and only then renamed into place, so an
  interrupted or corrupted download never leaves a file that looks complete;
- already in the data folder: the same md5 check before first use (gzip IDX
  files also pass when their decompressed content has the official md5, which
  accepts the same data recompressed, e.g. Debian's copy of Fashion-MNIST);
- a tar archive is verified once and its needed members extracted into a
  temporary folder that is renamed into place; later runs use the folder.
Files a user decompressed or extracted by hand are checked for structure only.

Setting SGD_INFLUENCE_NO_DOWNLOAD=1 turns downloads off (the error then says
what to fetch and where to put it); the test suite sets it.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

from sgd_influence.base.errors import UserError
from sgd_influence.base.layout import file_digest

NO_DOWNLOAD_ENV = "SGD_INFLUENCE_NO_DOWNLOAD"
CHUNK = 1 << 20
LOCAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)


@dataclass(frozen=True)
class Archive:
    """One official file: its name, where to get it (first URL = canonical), md5 and size in bytes."""
    name: str
    urls: Tuple[str, ...]
    md5: str
    size: int
    content_md5: str | None = None  # md5 of the decompressed content of a gzip file, where known


def _idx_files(bases: Sequence[str], specs) -> Tuple[Archive, ...]:
    return tuple(Archive(name, tuple(b + name for b in bases), md5, size, content)
                 for name, md5, size, content in specs)


# Published md5s and sizes of the official archives (dataset pages; the same values are in
# torchvision's dataset sources). The Fashion-MNIST content md5s were computed from Debian's
# dataset-fashion-mnist files, whose gzip streams are the official archives' with only the gzip
# header rewritten (restoring the header reproduced all four published md5s exactly).
ARCHIVES: Dict[str, Tuple[Archive, ...]] = {
    "mnist": _idx_files(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
         "http://yann.lecun.com/exdb/mnist/"),
        (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422, None),
         ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 28881, None),
         ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 1648877, None),
         ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 4542, None))),
    "fashion_mnist": _idx_files(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        (("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880,
          "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
         ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", 29515,
          "9018921c3c673c538a1fc5bad174d6f9"),
         ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", 4422102,
          "8181f5470baa50b63fa0f6fddb340f0a"),
         ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", 5148,
          "15d484375f8d13e6eb1aabb0c3f46965"))),
    "cifar10": (Archive("cifar-10-binary.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
                        "c32a1d4ab5d03f1284b67883e8d87530", 170052171),),
    "stl10": (Archive("stl10_binary.tar.gz", ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",),
                      "91f7769df0f17e558f3565bffb0c7dfb", 2640397119),),
}


def _md5_gzip_content(path: str) -> str | None:
    """md5 of the decompressed content, or None if the file is not a complete gzip stream."""
    h = hashlib.md5()
    try:
        with gzip.open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
    except (OSError, EOFError, zlib.error):
        return None
    return h.hexdigest()


def _bad_file(path: str, archive: Archive, digest: str) -> UserError:
    size = os.path.getsize(path)
    if size < archive.size:
        problem = f"truncated ({size:,} of {archive.size:,} bytes)"
    else:
        problem = f"corrupt or not the official file (md5 {digest}, expected {archive.md5})"
    return UserError(f"{path} is {problem} and was not used; delete it (it is downloaded again on the next run) "
                     f"or replace it with {archive.urls[0]}")


def verify(path: str, archive: Archive) -> None:
    """Raise UserError unless `path` holds the official `archive` (see the module docstring)."""
    digest = file_digest(path, "md5")
    if digest == archive.md5:
        return
    if archive.content_md5 and path.endswith(".gz") and _md5_gzip_content(path) == archive.content_md5:
        return
    raise _bad_file(path, archive, digest)


def _tmp_name(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.tmp{os.getpid()}{ext}"


_TMP_RE = re.compile(r"\.tmp(\d+)")


def _remove_stale(folder: str, stem: str) -> None:
    """Delete temporaries of `stem` left by killed processes (their pid no longer runs)."""
    for f in os.listdir(folder) if os.path.isdir(folder) else []:
        m = _TMP_RE.search(f)
        if not (f.startswith(stem + ".tmp") and m):
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its process still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        p = os.path.join(folder, f)
        if os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.remove(p)


class _Unavailable(Exception):
    """No URL gave the verified file (the message says why)."""


def download(archives: Sequence[Archive], folder: str) -> list:
    """Fetch each archive into `folder` (URL by URL until one gives the verified file); return the paths.

    When one cannot be had: one UserError naming every file still missing, where
    to get it and where to put it.
    """
    paths = []
    for i, archive in enumerate(archives):
        try:
            paths.append(_download(archive, folder))
        except _Unavailable as e:
            rest = archives[i:]
            names = ", ".join(a.name for a in rest)
            source = rest[0].urls[0] if len(rest) == 1 else rest[0].urls[0].rsplit("/", 1)[0] + "/"
            raise UserError(f"{e}: download {names} from {source} and put {'it' if len(rest) == 1 else 'them'} "
                            f"in {folder} (or pass --data-dir DIR holding {'it' if len(rest) == 1 else 'them'})")
    return paths


def _download(archive: Archive, folder: str) -> str:
    dest = os.path.join(folder, archive.name)
    if os.environ.get(NO_DOWNLOAD_ENV, "") not in ("", "0"):
        raise _Unavailable(f"{archive.name} is not in {folder} and downloads are off ({NO_DOWNLOAD_ENV} is set)")
    os.makedirs(folder, exist_ok=True)
    _remove_stale(folder, os.path.splitext(archive.name)[0])
    failures = []
    for url in archive.urls:
        tmp = _tmp_name(dest)
        try:
            digest, size = _fetch(url, tmp, archive.size)
            if digest != archive.md5:
                failures.append(f"{url} gave {size:,} bytes with md5 {digest}, expected {archive.size:,} bytes "
                                f"with md5 {archive.md5}")
                continue
            os.replace(tmp, dest)
            return dest
        except (OSError, ValueError, http.client.HTTPException) as e:  # offline, HTTP error, reset, timeout
            if getattr(e, "errno", None) in LOCAL_ERRNOS:
                raise  # our disk, not the network: reported as such by the driver
            failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise _Unavailable(f"cannot download {archive.name} ({'; '.join(failures)})")


def _fetch(url: str, path: str, expected_size: int) -> Tuple[str, int]:
    """Stream `url` into `path`; return (md5, bytes written)."""
    from tqdm import tqdm
    h, n = hashlib.md5(), 0
    print(f"downloading {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=60) as r, open(path, "wb") as f, \
            tqdm(total=expected_size, unit="B", unit_scale=True, leave=False, disable=None) as bar:
        for block in iter(lambda: r.read(CHUNK), b""):
            f.write(block)
            h.update(block)
            n += len(block)
            bar.update(len(block))
    return h.hexdigest(), n


def local_or_download(archive: Archive, folders: Sequence[str]) -> str:
    """Path of `archive`: the first copy in `folders` (verified), else downloaded into folders[0]."""
    for folder in folders:
        path = os.path.join(folder, archive.name)
        if os.path.isfile(path):
            verify(path, archive)
            return path
    return download([archive], folders[0])[0]


def extract(archive_path: str, members: Sequence[str], dest: str) -> None:
    """Extract the named regular-file members of a tar archive into the folder `dest`.

    Only these names are read and each is written under its base name inside
    `dest` (no path from the archive is used). The folder is filled under a
    temporary name and renamed into place once complete.
    """
    parent = os.path.dirname(os.path.abspath(dest))
    _remove_stale(parent, os.path.basename(dest))
    tmp = f"{dest}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    wanted = set(members)
    try:
        with tarfile.open(archive_path, "r:gz") as tar:
            for m in tar:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if name in wanted and m.isfile():
                    with tar.extractfile(m) as src, open(os.path.join(tmp, os.path.basename(name)), "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                    wanted.discard(name)
        if wanted:
            raise UserError(f"{archive_path} lacks {', '.join(sorted(wanted))}; it is not the official archive: "
                            f"delete it (it is downloaded again on the next run)")
        if os.path.isdir(dest):  # another process finished first
            return
        os.rename(tmp, dest)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UserError(f"{archive_path} is corrupt or truncated ({e}) and was not used; delete it "
                        f"(it is downloaded again on the next run)") from None
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
