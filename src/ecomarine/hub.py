"""The only module that talks to the Hugging Face Hub.

Sources are resolved like timm does: an existing local folder is used as is; anything
else of the form ``owner/name`` (optionally prefixed ``hf-hub:``) is a Hub repository,
fetched lazily file by file into the Hub's own cache. ``HF_HUB_OFFLINE=1`` (read at call
time) or ``local_files_only=True`` resolves from the cache alone. Every failure becomes
:class:`~ecomarine.errors.WeightsNotFoundError` naming the repository, the file and what
to do instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ._version import __version__
from .errors import WeightsNotFoundError

__all__ = [
    "HubLocation",
    "HubOptions",
    "fetch_file",
    "is_offline",
    "parse_location",
    "require_file",
    "upload_folder",
]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HINT = (
    'use Pipeline/Identifier.from_pretrained("embedded") for the bundled offline weights, '
    "or download the repository once while online"
)


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a truthy value (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubOptions:
    """How to reach the Hub: the keyword arguments every ``from_pretrained`` takes.

    Attributes:
        revision: Branch, tag or commit.
        cache_dir: Hub cache folder (default: the Hugging Face cache).
        local_files_only: Never touch the network (also implied by ``HF_HUB_OFFLINE=1``).
        token: Hub token for private repositories.
    """

    revision: str | None = None
    cache_dir: str | os.PathLike[str] | None = None
    local_files_only: bool = False
    token: str | bool | None = None


@dataclass(frozen=True)
class HubLocation:
    """Where model files come from: a local folder or a Hub repository.

    Attributes:
        local_dir: The folder, for a local source.
        repo_id: The repository id, for a Hub source.
        revision: Branch, tag or commit (Hub only).
        cache_dir: Hub cache folder override.
        local_files_only: Resolve from the cache only.
        token: Hub token.
    """

    local_dir: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    cache_dir: str | os.PathLike[str] | None = None
    local_files_only: bool = False
    token: str | bool | None = None

    def describe(self) -> str:
        """A short description for messages."""
        if self.local_dir is not None:
            return str(self.local_dir)
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf-hub:{self.repo_id}{rev}"


def parse_location(
    name_or_path: str | os.PathLike[str], options: HubOptions | None = None
) -> HubLocation:
    """Decide whether ``name_or_path`` is a local folder or a Hub repository id.

    Raises:
        WeightsNotFoundError: A path that does not exist, a file where a folder is
            expected, or a string that is neither a folder nor a valid repository id.
    """
    opts = options or HubOptions()
    text = os.fspath(name_or_path)
    if text.startswith("hf-hub:"):
        return _hub(text[len("hf-hub:") :], opts)
    path = Path(text).expanduser()
    if path.is_dir():
        return HubLocation(local_dir=path)
    if path.exists():
        raise WeightsNotFoundError(f"{path} is a file; expected a model folder or a repo id")
    looks_like_path = isinstance(name_or_path, os.PathLike) or text.startswith(
        (".", "/", "~", "\\")
    )
    if looks_like_path or not _REPO_ID.match(text):
        raise WeightsNotFoundError(
            f"model {text!r} not found: no such folder, and not a Hub repo id (owner/name); "
            + _HINT
        )
    return _hub(text, opts)


def _hub(repo_id: str, options: HubOptions) -> HubLocation:
    if not _REPO_ID.match(repo_id):
        raise WeightsNotFoundError(f"{repo_id!r} is not a valid Hub repo id (owner/name)")
    return HubLocation(
        repo_id=repo_id,
        revision=options.revision,
        cache_dir=options.cache_dir,
        local_files_only=options.local_files_only or is_offline(),
        token=options.token,
    )


def fetch_file(location: HubLocation, filename: str, *, required: bool = True) -> Path | None:
    """Return a local path to ``filename`` from a folder or the Hub (downloading lazily).

    Args:
        location: From :func:`parse_location`.
        filename: File name inside the folder or repository.
        required: When False, a file that does not exist (or, offline, is not in the
            cache) gives ``None``; other network failures still raise.

    Raises:
        WeightsNotFoundError: The file is missing (when required), not in the cache while
            offline, or the repository cannot be reached.
    """
    if location.local_dir is not None:
        path = location.local_dir / filename
        if path.is_file():
            return path
        if not required:
            return None
        raise WeightsNotFoundError(f"{location.describe()}: missing file {filename!r}")
    return _download(location, filename, required)


def require_file(location: HubLocation, filename: str) -> Path:
    """Like :func:`fetch_file` with ``required=True``, typed as always returning a path."""
    path = fetch_file(location, filename, required=True)
    if path is None:  # pragma: no cover - fetch_file raises instead
        raise WeightsNotFoundError(f"{location.describe()}: missing file {filename!r}")
    return path


def _download(location: HubLocation, filename: str, required: bool) -> Path | None:
    from huggingface_hub import hf_hub_download  # noqa: PLC0415 - lazy: only when used
    from huggingface_hub.errors import (  # noqa: PLC0415
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    assert location.repo_id is not None
    where = f"{location.describe()}: file {filename!r}"
    try:
        return Path(
            hf_hub_download(
                location.repo_id,
                filename,
                revision=location.revision,
                cache_dir=_cache_dir(location),
                local_files_only=location.local_files_only,
                token=location.token,
                library_name="ecomarine",
                library_version=__version__,
            )
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        if not required:
            return None  # the caller tries another layout, and reports the miss itself
        raise WeightsNotFoundError(
            f"{where} is not in the local Hugging Face cache and the Hub cannot be used "
            f"({'offline mode' if location.local_files_only else type(exc).__name__}); " + _HINT
        ) from exc
    except EntryNotFoundError as exc:
        if not required:
            return None
        raise WeightsNotFoundError(f"{where} does not exist in the repository") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise WeightsNotFoundError(
            f"{location.describe()}: repository or revision not found (check the id, "
            "or pass token= for a private repo)"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsNotFoundError(f"{where}: download failed ({exc}); " + _HINT) from exc


def _cache_dir(location: HubLocation) -> str | None:
    return None if location.cache_dir is None else os.fspath(location.cache_dir)


def upload_folder(
    folder: Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload with ecomarine",
) -> str:
    """Create ``repo_id`` if needed and upload every file of ``folder``; return the commit URL.

    Raises:
        WeightsNotFoundError: When offline.
    """
    if is_offline():
        raise WeightsNotFoundError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi  # noqa: PLC0415 - lazy: only when pushing

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message,
        revision=revision,
    )
    return str(getattr(info, "commit_url", info))
