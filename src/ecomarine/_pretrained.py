"""The save / load / push trio shared by :class:`Identifier`, :class:`Gate` and :class:`Pipeline`.

As in huggingface_hub's ``ModelHubMixin``: a class writes a folder with
``save_pretrained``; ``from_pretrained`` resolves where its files are (a bundled name, a
local folder, a Hub repository) and hands that to the class's own ``_from_source``;
``push_to_hub`` saves to a temporary folder and uploads it. The Hub keyword arguments
are declared here once.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from . import hub
from .hub import HubLocation, HubOptions

__all__ = ["BUNDLED", "Bundled", "LoadRequest", "PretrainedMixin", "Source", "resolve_source"]

BundledName = Literal["embedded", "embedded-imagenet"]
#: Names of the weights that ship inside the package (checked before any folder or repo).
#: ``"embedded"``: the trained bundled model; ``"embedded-imagenet"``: its untrained
#: ImageNet EfficientNet-Lite0 starting point (general features, and the embedded gate's
#: network).
BUNDLED: tuple[BundledName, ...] = ("embedded", "embedded-imagenet")


@dataclass(frozen=True)
class Bundled:
    """Weights bundled with the package, by name (see :data:`BUNDLED`)."""

    name: BundledName


#: Where a model's files come from.
Source = Bundled | HubLocation

_T = TypeVar("_T", bound="PretrainedMixin")


def resolve_source(name_or_path: str | os.PathLike[str], options: HubOptions) -> Source:
    """A bundled name, else a local folder or a Hub repository id (see :mod:`ecomarine.hub`).

    Raises:
        WeightsNotFoundError: Neither an existing folder nor a valid repository id.
    """
    if isinstance(name_or_path, str):
        for name in BUNDLED:
            if name_or_path == name:
                return Bundled(name)
    return hub.parse_location(name_or_path, options)


@dataclass(frozen=True)
class LoadRequest:
    """What ``from_pretrained`` was asked for, handed to the class's ``_from_source``.

    Attributes:
        name_or_path: The name, folder or repo id (``None``: the class's default).
        options: The Hub keyword arguments.
        device: Where to put the model (``None``: the best available).
    """

    name_or_path: str | os.PathLike[str] | None
    options: HubOptions
    device: Any = None

    def source(self) -> Source:
        """The bundled weights, folder or Hub repository asked for."""
        name = "embedded" if self.name_or_path is None else self.name_or_path
        return resolve_source(name, self.options)


class PretrainedMixin:
    """``save_pretrained``, ``from_pretrained`` and ``push_to_hub`` as one pair and a push.

    Subclasses implement :meth:`save_pretrained` and :meth:`_from_source`.
    """

    #: What ``from_pretrained()`` loads without a name.
    default_source: ClassVar[str | None] = "embedded"
    #: The commit message of :meth:`push_to_hub`.
    push_message: ClassVar[str] = "Upload with ecomarine"

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write the object's files into a folder; return the folder."""
        raise NotImplementedError

    @classmethod
    def _from_source(cls: type[_T], request: LoadRequest) -> _T:
        """Build from a request; subclasses add their own keyword arguments."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(
        cls: type[_T],
        name_or_path: str | os.PathLike[str] | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        device: Any = None,
        **kwargs: Any,
    ) -> _T:
        """Load from a bundled name, a folder written by ``save_pretrained``, or the Hub.

        Args:
            name_or_path: ``"embedded"`` (bundled, offline), a local folder, or a Hub repo
                id (``owner/name`` or ``hf-hub:owner/name``); default: the class's
                :attr:`default_source`.
            revision: Hub branch, tag or commit.
            cache_dir: Hub cache folder.
            local_files_only: Never touch the network (also implied by
                ``HF_HUB_OFFLINE=1``).
            token: Hub token for private repositories.
            device: Where to put the model (``str`` or ``torch.device``); default: CUDA,
                then MPS, then CPU.
            **kwargs: What the class takes besides (see its docstring).

        Raises:
            WeightsNotFoundError: A missing folder, file, repository, or an offline
                cache miss.
            ConfigError: An invalid config or weights that do not match it.
        """
        options = HubOptions(revision, cache_dir, local_files_only, token)
        name = cls.default_source if name_or_path is None else name_or_path
        return cls._from_source(LoadRequest(name, options, device), **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        commit_message: str | None = None,
    ) -> str:
        """Save to a temporary folder and upload it to ``repo_id``; return the commit URL.

        Raises:
            WeightsNotFoundError: When offline (``HF_HUB_OFFLINE``).
        """
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return hub.upload_folder(
                Path(tmp),
                repo_id,
                token=token,
                private=private,
                commit_message=commit_message or self.push_message,
            )


def location_of(source: Source) -> HubLocation | None:
    """The folder or repository of a source (``None`` for bundled weights)."""
    return source if isinstance(source, HubLocation) else None
