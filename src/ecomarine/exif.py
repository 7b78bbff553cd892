"""Event date and coordinates from a photo's EXIF (DateTimeOriginal + offset, GPS IFD)."""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["read_exif_event"]

logger = logging.getLogger(__name__)

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _OFFSET_ORIGINAL = 0x9003, 0x9011
_LAT_REF, _LAT, _LON_REF, _LON, _DATUM = 1, 2, 3, 4, 18
# What an EXIF value may look like before it becomes a Darwin Core term: a UTC offset
# (+hh:mm), and a datum name such as TOKYO or EPSG:4326 (never free text or formulas).
_OFFSET = re.compile(r"^[+-](0\d|1[0-4]):[0-5]\d$")
_DATUM_TEXT = re.compile(r"^[A-Z][A-Z0-9:._-]{0,31}$")


def _dms(value: Any) -> float:
    d, m, s = (float(x) for x in value)
    return d + m / 60.0 + s / 3600.0


def read_exif_event(source: str | os.PathLike[str]) -> dict[str, str]:
    """Darwin Core ``eventDate``, ``decimalLatitude``, ``decimalLongitude``, ``geodeticDatum``.

    Only the tags that are present and valid are returned; unreadable files give ``{}``.
    """
    path = Path(source)
    out: dict[str, str] = {}
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            sub = exif.get_ifd(_EXIF_IFD)
            gps = exif.get_ifd(_GPS_IFD)
    except Exception as exc:  # any unreadable or odd file: no EXIF, not an error
        logger.debug("no EXIF from %s: %s", path, exc)
        return out
    stamp = sub.get(_DATETIME_ORIGINAL)
    if isinstance(stamp, str):
        try:
            when = datetime.strptime(stamp.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
            offset = sub.get(_OFFSET_ORIGINAL)
            text = when.isoformat()
            if isinstance(offset, str) and _OFFSET.match(offset.strip("\x00 ")):
                text += offset.strip("\x00 ")
            elif offset is not None:
                logger.debug("ignoring bad OffsetTimeOriginal %r in %s", offset, path)
            out["eventDate"] = text
        except ValueError:
            logger.debug("bad DateTimeOriginal %r in %s", stamp, path)
    try:
        if _LAT in gps and _LON in gps:
            lat, lon = _dms(gps[_LAT]), _dms(gps[_LON])
            if str(gps.get(_LAT_REF, "N")).upper().startswith("S"):
                lat = -lat
            if str(gps.get(_LON_REF, "E")).upper().startswith("W"):
                lon = -lon
            if -90 <= lat <= 90 and -180 <= lon <= 180:
                out["decimalLatitude"] = f"{lat:.6f}"
                out["decimalLongitude"] = f"{lon:.6f}"
                datum = str(gps.get(_DATUM, "")).strip("\x00 ").upper().replace(" ", "")
                if datum in ("", "WGS-84", "WGS84"):
                    out["geodeticDatum"] = "EPSG:4326"
                elif _DATUM_TEXT.match(datum):
                    out["geodeticDatum"] = datum
                else:
                    logger.debug("ignoring bad GPSMapDatum %r in %s", datum[:40], path)
    except (TypeError, ValueError, ZeroDivisionError):
        logger.debug("bad GPS tags in %s", path)
    return out
