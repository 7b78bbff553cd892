"""Group photos into sightings: by a CSV column, by folder, by capture time, or from video.

A sighting is a set of photos (or video frames) of **one** animal: a burst, a drone pass,
a boat approach (Wildbook calls it an encounter). Identified together
(:meth:`~ecomarine.pipeline.Pipeline.predict_sightings`), the photos are stronger
evidence than any one of them. Each grouping here is only as right as its assumption:

* ``by_column``: the field team's own annotation (the most reliable);
* ``by_folder``: one folder per sighting;
* ``by_time``: consecutive photos closer in time than a gap; right only when a burst
  follows one animal (a group of dolphins photographed together is *not* one sighting);
* ``video_frames``: one video (or segment) of one animal, frames sampled at a rate
  (optional extra ``video``: PyAV, which ships FFmpeg in its wheel).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from ._files import safe_is_file
from ._text import read_csv
from .errors import DataError
from .exif import read_exif_event

__all__ = [
    "MAX_VIDEO_FRAMES",
    "VIDEO_SUFFIXES",
    "VideoError",
    "by_column",
    "by_folder",
    "by_time",
    "capture_time",
    "parse_gap",
    "read_sighting_csv",
    "video_frames",
]

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".m4v", ".webm", ".mts"})
#: Frames taken from one video at most (a 10-minute clip at 1 frame/s is 600).
MAX_VIDEO_FRAMES = 600
_GAP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")
_PHOTO_COLUMNS = ("photo", "image", "source", "file")


class VideoError(DataError):
    """A video that cannot be read (corrupt, truncated, not a video, no video stream)."""


def parse_gap(text: str) -> timedelta:
    """A time gap such as ``30s``, ``2m``, ``1.5h`` or ``500ms`` (seconds without a unit).

    Raises:
        DataError: For anything else, or a gap that is not positive.
    """
    match = _GAP.match(text)
    if not match:
        raise DataError(f"gap {text!r}: expected a number with s, m, h or ms (e.g. 30s)")
    value = float(match.group(1))
    unit = match.group(2) or "s"
    seconds = value * {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise DataError(f"gap {text!r} must be positive")
    return timedelta(seconds=seconds)


def capture_time(path: str | os.PathLike[str]) -> datetime | None:
    """When a photo was taken (EXIF ``DateTimeOriginal``, with its offset when present)."""
    stamp = read_exif_event(path).get("eventDate")
    if stamp is None:
        return None
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


def by_folder(photos: Sequence[tuple[Path, str]]) -> dict[str, list[Path]]:
    """One sighting per folder: photos named ``a/b/IMG.jpg`` go to sighting ``a/b``.

    Args:
        photos: ``(path, name under the input folder)`` pairs.

    Photos directly in the input folder are each a sighting of their own.
    """
    out: dict[str, list[Path]] = {}
    for path, name in photos:
        parent = str(PurePosixPath(name).parent)
        out.setdefault(name if parent == "." else parent, []).append(path)
    return out


def by_time(
    photos: Sequence[tuple[Path, str]],
    gap: timedelta,
    times: Mapping[str, datetime] | None = None,
) -> dict[str, list[Path]]:
    """Bursts: photos taken less than ``gap`` apart (in time order) form one sighting.

    Times come from ``times`` (by name, e.g. a CSV column) or the photos' EXIF. A photo
    without a time is a sighting of its own (logged). Sightings are named
    ``burst-<first time>``; right only when a burst follows one animal.
    """
    timed: list[tuple[datetime, Path, str]] = []
    out: dict[str, list[Path]] = {}
    untimed = 0
    for path, name in photos:
        when = (times or {}).get(name) or capture_time(path)
        if when is None:
            out[name] = [path]
            untimed += 1
        else:
            timed.append((when, path, name))
    if untimed:
        logger.warning("%d photos have no capture time: each is a sighting of its own", untimed)

    def key(item: tuple[datetime, Path, str]) -> tuple[float, str]:
        when = item[0]
        # Naive and offset times sort together by their wall-clock reading.
        return (when.replace(tzinfo=None).timestamp(), item[2])

    timed.sort(key=key)
    current: list[Path] = []
    label, last = "", None
    for when, path, _name in timed:
        plain = when.replace(tzinfo=None)
        if last is None or plain - last >= gap:
            if current:
                out[label] = current
            current, label = [], f"burst-{plain.isoformat(timespec='seconds')}"
            while label in out:
                label += "+"
        current.append(path)
        last = plain
    if current:
        out[label] = current
    return out


def read_sighting_csv(
    path: str | os.PathLike[str], column: str | None = None, time_column: str | None = None
) -> tuple[dict[str, str], dict[str, datetime]]:
    """Sighting ids (and optionally capture times) per photo, from a CSV.

    The photo column is ``photo`` (or ``image``, ``source``, ``file``): the path under the
    input folder, the path as given, or the file name.

    Returns:
        ``(sighting per photo, time per photo)``.

    Raises:
        DataError: Missing columns, empty cells, unreadable times; naming file and line.
    """
    where = Path(path)
    columns, rows = read_csv(where, "sighting CSV")
    photo_col = next((c for c in _PHOTO_COLUMNS if c in columns), None)
    if photo_col is None:
        raise DataError(f"{where}: no photo column (one of {list(_PHOTO_COLUMNS)})")
    for wanted in (column, time_column):
        if wanted is not None and wanted not in columns:
            raise DataError(f"{where}: no column {wanted!r}; found {columns}")
    ids: dict[str, str] = {}
    times: dict[str, datetime] = {}
    for line, row in enumerate(rows, start=2):
        photo = row.get(photo_col, "")
        if not photo:
            raise DataError(f"{where}:{line}: empty {photo_col}")
        if column is not None:
            if not row.get(column):
                raise DataError(f"{where}:{line}: empty {column}")
            ids[photo] = row[column]
        if time_column is not None and row.get(time_column):
            try:
                times[photo] = datetime.fromisoformat(row[time_column])
            except ValueError as exc:
                raise DataError(
                    f"{where}:{line}: {time_column} {row[time_column]!r} is not an ISO time"
                ) from exc
    return ids, times


def by_column(
    photos: Sequence[tuple[Path, str]], sighting_of: Mapping[str, str]
) -> dict[str, list[Path]]:
    """Sightings from a mapping photo -> sighting id (see :func:`read_sighting_csv`).

    A photo is looked up by its name under the input folder, its path, then its file name.

    Raises:
        DataError: For photos the mapping does not name (all of them are listed, up to 5).
    """
    by_name: dict[str, str] = {}
    clashes: set[str] = set()
    for key, value in sighting_of.items():
        base = PurePosixPath(key.replace("\\", "/")).name
        if base in by_name and by_name[base] != value:
            clashes.add(base)
        by_name[base] = value
    out: dict[str, list[Path]] = {}
    missing = []
    for path, name in photos:
        sid = sighting_of.get(name) or sighting_of.get(str(path))
        if sid is None and path.name not in clashes:
            sid = by_name.get(path.name)
        if sid is None:
            missing.append(name)
            continue
        out.setdefault(sid, []).append(path)
    if missing:
        raise DataError(f"{len(missing)} photos have no sighting in the CSV, e.g. {missing[:5]}")
    return out


def video_frames(
    path: str | os.PathLike[str],
    *,
    fps: float = 1.0,
    max_frames: int = MAX_VIDEO_FRAMES,
) -> list[tuple[str, Image.Image]]:
    """Frames of a video sampled at ``fps``, named ``<path>#t=<seconds>`` (media fragments).

    Args:
        path: A video file (anything FFmpeg reads: MP4, MOV, AVI, MKV, ...).
        fps: Frames per second to keep (the first frame at or after each multiple of
            ``1 / fps``).
        max_frames: Stop after this many frames (long videos: split them into segments).

    Raises:
        VideoError: Not a regular file, unreadable, corrupt, or without a video stream.
        ImportError: When PyAV is not installed (``pip install "ecomarine[video]"``).
    """
    if not fps > 0:
        raise DataError(f"fps must be positive, got {fps}")
    source = Path(path)
    if not safe_is_file(source):
        raise VideoError(f"{source}: not a readable regular file")
    try:
        import av  # noqa: PLC0415 - optional extra
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise ImportError('reading video needs PyAV: pip install "ecomarine[video]"') from exc
    out: list[tuple[str, Image.Image]] = []
    try:
        with av.open(str(source)) as container:
            if not container.streams.video:
                raise VideoError(f"{source}: no video stream")
            stream = container.streams.video[0]
            step, next_t = 1.0 / fps, 0.0
            for frame in container.decode(stream):
                t = _frame_time(frame, len(out), fps)
                if t + 1e-6 < next_t:
                    continue
                out.append((f"{source}#t={t:.3f}", _frame_image(frame)))
                next_t += step * max(1, int((t - next_t) / step) + 1)
                if len(out) >= max_frames:
                    logger.warning("%s: kept the first %d frames", source, max_frames)
                    break
    except VideoError:
        raise
    except Exception as exc:  # PyAV raises its own FFmpeg error types for bad data
        raise VideoError(f"{source}: not a readable video ({type(exc).__name__}: {exc})") from exc
    if not out:
        raise VideoError(f"{source}: no frames could be decoded")
    return out


def _frame_image(frame: Any) -> Image.Image:
    image: Image.Image = frame.to_image()
    return image.convert("RGB")


def _frame_time(frame: Any, index: int, fps: float) -> float:
    """A frame's time in seconds (its index at ``fps`` when the stream has no timestamps)."""
    if frame.time is not None:
        return float(frame.time)
    return index / fps


def video_files(paths: Iterable[Path]) -> list[Path]:
    """The paths that look like videos (by suffix)."""
    return [p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES]
