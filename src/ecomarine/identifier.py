"""The :class:`Identifier`: a timm backbone, pooling, an embedding neck and an ArcFace head.

``embed()`` turns photos into L2-normalised vectors; ``classify()`` ranks the known
individuals of the head. ``save_pretrained``/``from_pretrained`` are a pair (config,
safetensors weights, labels, model card), and ``from_pretrained`` also reads the
bundled ``"embedded"`` weights and the legacy EcoMarineAI checkpoint layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import timm
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor, nn

from . import hub
from ._atomic import atomic_write_bytes, atomic_write_text
from ._device import conv_layout, resolve_device
from .config import IdentifierConfig, read_json
from .errors import ConfigError
from .heads import ArcMarginProduct, GeM, SubCenterArcMarginProduct
from .io import ImageSource
from .transforms import default_workers, load_batch
from .types import Match

__all__ = ["EmbeddingKind", "Identifier", "check_state_dict"]

logger = logging.getLogger(__name__)

#: ``"embedding"``: the trained (neck) embedding; ``"features"``: the backbone's general
#: pooled features, which transfer better to species the model was not trained on.
EmbeddingKind = Literal["embedding", "features"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LABELS_NAME = "labels.json"
CARD_NAME = "README.md"


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Load ``state`` into ``module`` strictly, with a message listing every bad key.

    Raises:
        ConfigError: On missing or unexpected keys or on shape mismatches.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing tensors {_clip(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_clip(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_clip(shapes)}")
    if problems:
        raise ConfigError(f"{where}: weights do not match the architecture: " + "; ".join(problems))
    module.load_state_dict(dict(state), strict=True)


def _clip(items: list[str], limit: int = 10) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return str(items[:limit]) + more


class Identifier(nn.Module):
    """Backbone -> pooling -> neck -> (optional) ArcFace head.

    Args:
        config: Architecture and preprocessing.
        labels: Known individual ids, one per head row (required for a head).
        species: Species label per individual id, when known.

    Example:
        >>> ident = Identifier.from_pretrained("embedded")  # doctest: +SKIP
        >>> ident.embed(["whale.jpg"]).shape  # doctest: +SKIP
        (1, 512)
    """

    def __init__(
        self,
        config: IdentifierConfig,
        labels: Sequence[str] = (),
        species: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.labels: list[str] = [str(x) for x in labels]
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError("labels contain duplicate individual ids")
        self.species_by_id: dict[str, str] = dict(species or {})
        # timm models share an informal interface (forward_features, forward_head,
        # num_features) that nn.Module's type does not describe.
        self.backbone: Any
        self.backbone, self.pool, self.neck, features, embedding = _build_member(config)
        # Members 2.. of an ensemble; empty (no tensors) for a single network, so that
        # single-network weight files keep their key names.
        self.extra_members = nn.ModuleList(_Member(config) for _ in range(config.members - 1))
        self.num_features = features * config.members
        self.embedding_size = embedding * config.members
        self.head: ArcMarginProduct | SubCenterArcMarginProduct | None = None
        if config.head is not None:
            if not self.labels:
                raise ConfigError("a head needs labels (the known individual ids)")
            h = config.head
            if h.type == "subcenter":
                self.head = SubCenterArcMarginProduct(
                    self.embedding_size, len(self.labels), h.k, h.s, h.m, h.easy_margin, h.ls_eps
                )
            else:
                self.head = ArcMarginProduct(
                    self.embedding_size, len(self.labels), h.s, h.m, h.easy_margin, h.ls_eps
                )
        self.eval()

    # --- forward passes -----------------------------------------------------------------

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone feature map ``(B, C, H, W)`` (of the first member of an ensemble)."""
        out: Tensor = self.backbone.forward_features(x)
        return out

    def _members(self) -> list[tuple[Any, nn.Module, nn.Module]]:
        members = [cast(_Member, m) for m in self.extra_members]
        extra = [(m.backbone, m.pool, m.neck) for m in members]
        return [(self.backbone, self.pool, self.neck), *extra]

    def _member_features(self, x: Tensor) -> list[Tensor]:
        # One backbone pass per network; the raw pooled features each neck reads.
        return [pool(bb.forward_features(x)) for bb, pool, _ in self._members()]

    def _member_embeddings(self, features: list[Tensor]) -> list[Tensor]:
        return [neck(f) for (_, _, neck), f in zip(self._members(), features, strict=True)]

    def pooled(self, x: Tensor) -> Tensor:
        """General pooled features ``(B, num_features)``.

        Not normalised for a single network; an ensemble concatenates its members'
        unit-norm features, scaled so that the result has unit norm.
        """
        features = self._member_features(x)
        return features[0] if not self.extra_members else _concat_unit(features)

    def forward(self, x: Tensor) -> Tensor:
        """Trained embedding ``(B, embedding_size)`` (not normalised; training uses this).

        An ensemble concatenates its members' unit-norm embeddings (unit norm overall), so
        cosine similarity is the mean of the members' cosine similarities.
        """
        embeddings = self._member_embeddings(self._member_features(x))
        return embeddings[0] if not self.extra_members else _concat_unit(embeddings)

    def imagenet_logits(self, x: Tensor) -> Tensor:
        """Logits of the backbone's own classifier (needs ``backbone_num_classes > 0``)."""
        if self.config.backbone_num_classes == 0:
            raise ConfigError("this identifier has no backbone classifier")
        out: Tensor = self.backbone.forward_head(self.forward_features(x))
        return out

    # --- inference ----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device holding the parameters."""
        return next(self.parameters()).device

    def embed_tensor(self, batch: Tensor, kind: EmbeddingKind = "embedding") -> Tensor:
        """Unit-norm embeddings of a preprocessed batch (runs in inference mode)."""
        return self.embed_tensor_kinds(batch, (kind,))[kind]

    def embed_tensor_kinds(
        self, batch: Tensor, kinds: Sequence[EmbeddingKind] = ("embedding", "features")
    ) -> dict[EmbeddingKind, Tensor]:
        """Unit-norm vectors of several kinds from one backbone pass over a batch.

        The features are what the neck reads, so asking for both costs one pass, not two.
        """
        wanted = _check_kinds(kinds)
        with torch.inference_mode():
            x = conv_layout(batch, self.device)
            features = self._member_features(x)
            out: dict[EmbeddingKind, Tensor] = {}
            if "features" in wanted:
                out["features"] = _concat_unit(features)
            if "embedding" in wanted:
                out["embedding"] = _concat_unit(self._member_embeddings(features))
            return out

    def embed(
        self,
        images: Sequence[ImageSource] | ImageSource,
        *,
        batch_size: int = 32,
        kind: EmbeddingKind = "embedding",
        num_workers: int | None = None,
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Embed photos as unit-norm rows.

        Args:
            images: One image source or a sequence of them (anything
                :func:`~ecomarine.io.load_image` accepts).
            batch_size: Images per network pass.
            kind: ``"embedding"`` (trained) or ``"features"`` (general pooled features).
            num_workers: Decode threads (default: CPU count, at most 8).

        Returns:
            ``(N, D)`` float32 array with unit L2 norm rows.

        Raises:
            InvalidImageError: If an image cannot be read.
        """
        return self.embed_kinds(
            images, kinds=(kind,), batch_size=batch_size, num_workers=num_workers
        )[kind]

    def embed_kinds(
        self,
        images: Sequence[ImageSource] | ImageSource,
        *,
        kinds: Sequence[EmbeddingKind] = ("embedding", "features"),
        batch_size: int = 32,
        num_workers: int | None = None,
    ) -> dict[EmbeddingKind, np.ndarray[Any, np.dtype[np.float32]]]:
        """Embed photos as several kinds of unit-norm rows, decoding and running once.

        Same arguments as :meth:`embed`, with ``kinds`` instead of ``kind``.

        Returns:
            One ``(N, D)`` float32 array per requested kind.

        Raises:
            ConfigError: For an unknown kind or a batch size below one.
            InvalidImageError: If an image cannot be read.
        """
        sources = _as_list(images)
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        wanted = _check_kinds(kinds)
        workers = default_workers() if num_workers is None else max(1, num_workers)
        dims = {"features": self.num_features, "embedding": self.embedding_size}
        if not sources:
            return {k: np.zeros((0, dims[k]), np.float32) for k in wanted}
        self.eval()
        chunks: dict[EmbeddingKind, list[np.ndarray[Any, Any]]] = {k: [] for k in wanted}
        for start in range(0, len(sources), batch_size):
            batch = load_batch(
                sources[start : start + batch_size], self.config.preprocess, workers, self.device
            )
            for k, vectors in self.embed_tensor_kinds(batch, wanted).items():
                chunks[k].append(vectors.cpu().numpy())
        return {k: np.concatenate(v).astype(np.float32, copy=False) for k, v in chunks.items()}

    def classify(
        self,
        images: Sequence[ImageSource] | ImageSource,
        *,
        top_k: int = 5,
        batch_size: int = 32,
        num_workers: int | None = None,
    ) -> list[list[Match]]:
        """Closed-set ranking of the head's known individuals for each photo.

        Returns:
            Per image, the ``top_k`` individuals with softmax probabilities, best first.

        Raises:
            ConfigError: If the identifier has no head.
        """
        if self.head is None:
            raise ConfigError("this identifier has no ArcFace head; use a Gallery instead")
        emb = torch.from_numpy(
            self.embed(images, batch_size=batch_size, num_workers=num_workers)
        ).to(self.device)
        return self.matches_from_embeddings(emb, top_k)

    def matches_from_embeddings(self, emb: Tensor, top_k: int = 5) -> list[list[Match]]:
        """Rank head classes for unit-norm embeddings (see :meth:`classify`)."""
        if self.head is None:
            raise ConfigError("this identifier has no ArcFace head")
        with torch.inference_mode():
            probs = torch.softmax(self.head(emb.to(self.device)), dim=1).cpu()
        k = max(1, min(top_k, probs.shape[1]))
        values, indices = probs.topk(k, dim=1)
        out = []
        for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True):
            out.append(
                [
                    Match(self.labels[i], float(v), self.species_by_id.get(self.labels[i]))
                    for v, i in zip(row_v, row_i, strict=True)
                ]
            )
        return out

    def threshold_for(self, kind: EmbeddingKind) -> float | None:
        """The shipped open-set threshold for this kind of embedding, if calibrated."""
        if kind == "features":
            return self.config.feature_new_individual_threshold
        return self.config.new_individual_threshold

    @property
    def new_individual_threshold(self) -> float | None:
        """Open-set threshold of the trained embedding (from ``config.json``)."""
        return self.config.new_individual_threshold

    def fingerprint(self, kind: EmbeddingKind = "embedding") -> str:
        """A hash of the architecture, preprocessing and weights that make an embedding.

        Galleries store it and refuse to mix vectors from different models or kinds.
        """
        digest = hashlib.sha256()
        arch = self.config.to_dict()
        for key in ("new_individual_threshold", "feature_new_individual_threshold", "name"):
            arch.pop(key)
        arch.pop("head")
        digest.update(json.dumps([arch, kind], sort_keys=True).encode())
        modules: list[nn.Module] = []
        for backbone, pool, neck in self._members():
            modules += [backbone, pool] + ([neck] if kind == "embedding" else [])
        for module in modules:
            for name, tensor in sorted(module.state_dict().items()):
                if "num_batches_tracked" in name:
                    continue
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    # --- persistence --------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        *,
        model_card: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Path:
        """Write ``config.json``, ``model.safetensors``, ``labels.json`` and ``README.md``.

        Each file is written atomically. Returns the folder.

        Args:
            save_directory: The folder (created if needed).
            model_card: ``README.md`` text; default: a card generated from the config.
            dtype: Store floating-point tensors in this type (``torch.float16`` halves
                the file). Loading casts them back to the model's float32, so the loaded
                model computes with the rounded weights; calibrate after rounding.
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for key, value in self.state_dict().items():
            tensor = value.detach().cpu()
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[key] = tensor.contiguous()
        atomic_write_bytes(folder / WEIGHTS_NAME, save_safetensors_bytes(state))
        labels = {"individual_ids": self.labels, "species": self.species_by_id}
        atomic_write_text(folder / LABELS_NAME, json.dumps(labels, indent=1) + "\n")
        atomic_write_text(folder / CONFIG_NAME, json.dumps(self.config.to_dict(), indent=2) + "\n")
        from .model_card import identifier_card  # noqa: PLC0415 - only needed when saving

        atomic_write_text(folder / CARD_NAME, model_card or identifier_card(self))
        return folder

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        commit_message: str = "Upload ecomarine identifier",
    ) -> str:
        """Save to a temporary folder and upload it to ``repo_id``; return the commit URL."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return hub.upload_folder(
                Path(tmp), repo_id, token=token, private=private, commit_message=commit_message
            )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] = "embedded",
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        device: str | torch.device | None = None,
        allow_pickle: bool = False,
    ) -> Identifier:
        """Load an identifier from ``"embedded"``, a local folder or a Hub repository.

        Args:
            name_or_path: ``"embedded"`` (bundled, offline), a folder written by
                :meth:`save_pretrained` or holding the legacy EcoMarineAI files, or a Hub
                repo id (``owner/name`` or ``hf-hub:owner/name``).
            revision: Hub branch, tag or commit.
            cache_dir: Hub cache folder.
            local_files_only: Never touch the network (also implied by
                ``HF_HUB_OFFLINE=1``).
            token: Hub token for private repositories.
            device: Where to put the model; default: CUDA, then MPS, then CPU.
            allow_pickle: Let the legacy import unpickle arbitrary objects. Only for
                files you trust: unpickling can run any code.

        Raises:
            WeightsNotFoundError: A missing folder, file, repository, or an offline cache miss.
            ConfigError: An invalid config or weights that do not match it.
            UnsafeFileError: A legacy file needs unpickling and ``allow_pickle`` is False.
        """
        if os.fspath(name_or_path) == "embedded":
            from .embedded import load_embedded_identifier  # noqa: PLC0415

            model = load_embedded_identifier()
        else:
            location = hub.parse_location(
                name_or_path,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
            )
            config_path = hub.fetch_file(location, CONFIG_NAME, required=False)
            if config_path is None:
                from .legacy import load_legacy  # noqa: PLC0415

                model = load_legacy(location, allow_pickle=allow_pickle)
            else:
                model = cls._from_files(location, config_path)
        return model.to(resolve_device(device)).eval()

    @classmethod
    def _from_files(cls, location: hub.HubLocation, config_path: Path) -> Identifier:
        config = IdentifierConfig.from_dict(read_json(config_path), where=str(config_path))
        labels_path = hub.fetch_file(location, LABELS_NAME, required=config.head is not None)
        ids: list[str] = []
        species: dict[str, str] = {}
        if labels_path is not None:
            ids, species = _read_labels(labels_path)
        weights_path = hub.require_file(location, WEIGHTS_NAME)
        model = cls(config, ids, species)
        try:
            state = load_safetensors_bytes(weights_path.read_bytes())
        except Exception as exc:  # safetensors raises its own error types on bad headers
            raise ConfigError(f"{weights_path}: unreadable safetensors file ({exc})") from exc
        check_state_dict(model, state, str(weights_path))
        return model


def _read_labels(path: Path) -> tuple[list[str], dict[str, str]]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("individual_ids"), list):
        raise ConfigError(f"{path}: expected {{'individual_ids': [...], 'species': {{...}}}}")
    species = data.get("species") or {}
    if not isinstance(species, dict):
        raise ConfigError(f"{path}: 'species' must be an object mapping id -> species")
    return [str(x) for x in data["individual_ids"]], {str(k): str(v) for k, v in species.items()}


def _as_list(images: Sequence[ImageSource] | ImageSource) -> list[ImageSource]:
    # A single source (str/bytes are Sequences too) becomes a one-item list.
    if isinstance(images, list | tuple):
        return list(images)
    if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike | np.ndarray):
        return [images]
    if hasattr(images, "read") or hasattr(images, "getpixel"):
        return [images]  # type: ignore[list-item]
    return list(images)


def _build_member(config: IdentifierConfig) -> tuple[Any, nn.Module, nn.Module, int, int]:
    """Backbone, pooling and neck of one network; with its feature and embedding sizes."""
    backbone: Any
    try:
        backbone = timm.create_model(
            config.backbone, pretrained=False, num_classes=config.backbone_num_classes
        )
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ConfigError(f"unknown timm backbone {config.backbone!r}: {exc}") from exc
    features = int(backbone.num_features)
    pool: nn.Module = GeM() if config.pooling == "gem" else _AvgPool()
    size = config.embedding_size
    neck: nn.Module
    if config.neck == "bn":
        neck = nn.Sequential(nn.Linear(features, size), nn.BatchNorm1d(size))
    elif config.neck == "linear":
        neck = nn.Linear(features, size)
    else:
        neck, size = nn.Identity(), features
    return backbone, pool, neck, features, size


class _Member(nn.Module):
    """One further network of an ensemble (the first one is the identifier's own)."""

    def __init__(self, config: IdentifierConfig) -> None:
        super().__init__()
        self.backbone: Any
        self.backbone, self.pool, self.neck, _, _ = _build_member(config)


def _check_kinds(kinds: Sequence[EmbeddingKind]) -> tuple[EmbeddingKind, ...]:
    wanted = tuple(dict.fromkeys(kinds))
    bad = [k for k in wanted if k not in ("embedding", "features")]
    if bad or not wanted:
        raise ConfigError(f"kinds must be 'embedding' and/or 'features', got {list(kinds)!r}")
    return wanted


def _concat_unit(parts: list[Tensor]) -> Tensor:
    if len(parts) == 1:
        return F.normalize(parts[0].float(), dim=1)
    # Each part unit-norm, the whole scaled by 1/sqrt(M): the result has unit norm and its
    # dot products are the mean of the members' cosine similarities.
    scale = 1.0 / float(len(parts)) ** 0.5
    return torch.cat([F.normalize(p.float(), dim=1) * scale for p in parts], dim=1)


class _AvgPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))
