"""Reading photos out of requests: raw bodies, multipart files and ZIP archives.

Every check happens before an image is decoded. ZIP archives are refused when they could
hurt the server or the files of the person who made them: too many entries, too much
uncompressed data, an entry that expands more than ``max_zip_ratio`` times (a bomb), a
name that climbs out of its folder or is absolute, a symbolic link, an encrypted entry,
or an archive inside the archive.
"""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import PurePosixPath

from ._config import ServeConfig
from ._errors import RequestError

__all__ = ["read_zip"]

_ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst")
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!", b"BZh", b"\xfd7zXZ")


def _skipped(name: str) -> bool:
    # Finder and Explorer leave these beside the photos; they are never photos.
    base = PurePosixPath(name).name
    return (
        name.startswith("__MACOSX/") or base.startswith("._") or base in {".DS_Store", "Thumbs.db"}
    )


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or ":" in path.parts[0]
        or ".." in path.parts
        or any(ord(c) < 32 for c in name)
    ):
        raise RequestError(
            400, "unsafe_name", f"ZIP entry name {name!r} is not a plain relative path"
        )


def read_zip(data: bytes, config: ServeConfig) -> list[tuple[str, bytes]]:
    """The photos of a ZIP archive, as ``(entry name, bytes)`` in archive order.

    Raises:
        RequestError: For anything the module docstring lists, or an unreadable archive.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir() and not _skipped(i.filename)]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise RequestError(400, "bad_zip", f"not a readable ZIP archive ({exc})") from exc
    if len(infos) > config.max_files:
        raise RequestError(
            413, "too_many_files", f"{len(infos)} entries; at most {config.max_files} per request"
        )
    if not infos:
        raise RequestError(400, "no_photos", "the ZIP archive holds no files")
    total = 0
    for info in infos:
        name = info.filename
        _check_name(name)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise RequestError(400, "symlink_entry", f"ZIP entry {name!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise RequestError(400, "encrypted_entry", f"ZIP entry {name!r} is encrypted")
        if name.lower().endswith(_ARCHIVE_SUFFIXES):
            raise RequestError(400, "nested_archive", f"ZIP entry {name!r} is an archive")
        total += info.file_size
        if total > config.max_zip_uncompressed:
            raise RequestError(
                413,
                "zip_too_large",
                f"the entries expand to more than {config.max_zip_uncompressed} bytes",
            )
        if info.file_size > config.max_zip_ratio * max(info.compress_size, 1):
            raise RequestError(
                413,
                "zip_bomb",
                f"ZIP entry {name!r} expands {info.file_size} bytes from {info.compress_size}",
            )
    out = []
    for info in infos:
        try:
            with archive.open(info) as fh:
                content = fh.read(info.file_size + 1)  # never more than the header promised
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
            raise RequestError(400, "bad_zip", f"ZIP entry {info.filename!r}: {exc}") from exc
        if len(content) > info.file_size:
            raise RequestError(400, "bad_zip", f"ZIP entry {info.filename!r} is longer than stated")
        if content.startswith(_ARCHIVE_MAGIC):
            raise RequestError(400, "nested_archive", f"ZIP entry {info.filename!r} is an archive")
        out.append((info.filename, content))
    return out
