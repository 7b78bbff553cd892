"""The :class:`Identifier`: a timm backbone, pooling, an embedding neck and an ArcFace head.

``embed()`` turns photos into L2-normalised vectors; ``classify()`` ranks the known
individuals of the head. ``save_pretrained``/``from_pretrained`` are a pair (config,
safetensors weights, labels, model card); the loading factory (:mod:`ecomarine.factory`)
reads every source (the bundled ``"embedded"`` weights, folders, the Hub, the legacy
EcoMarineAI layout) into plain parts, and :func:`build_identifier` checks and builds them.
The identifier also owns the layout of an ensemble's weights (:meth:`Identifier.networks`,
:meth:`Identifier.from_networks`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor, nn

from ._atomic import atomic_write_bytes, atomic_write_text
from ._backbones import build_backbone
from ._device import conv_layout, resolve_device
from ._fuse import FusedCache, Traced
from ._parts import IdentifierParts
from ._pretrained import LoadRequest, PretrainedMixin
from .config import IdentifierConfig
from .errors import ConfigError
from .factory import CARD_NAME, CONFIG_NAME, LABELS_NAME, WEIGHTS_NAME, identifier_parts
from .heads import ArcMarginProduct, GeM, SubCenterArcMarginProduct, build_head
from .io import ImageSource
from .transforms import default_workers, load_batch
from .types import EMBEDDING_KINDS, EmbeddingKind, Match
from .zoo import LICENSE_LOGGER, non_commercial

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "EmbeddingKind",
    "Identifier",
    "build_identifier",
    "check_state_dict",
]

logger = logging.getLogger(__name__)

# Key prefix of ensemble member i + 1 (member 0 uses the single-network names).
_MEMBER_PREFIX = "extra_members.{}."
# A network's own modules (the head, when there is one, is shared by the members).
_NETWORK_PARTS = ("backbone", "pool", "neck")


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Load ``state`` into ``module`` strictly, with a message listing every bad key.

    Raises:
        ConfigError: On missing or unexpected keys or on shape mismatches.
    """
    check_state_shapes(module, state, where)
    module.load_state_dict(dict(state), strict=True)


def check_state_shapes(module: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Check that ``state`` has exactly ``module``'s keys and shapes (nothing is loaded).

    Raises:
        ConfigError: On missing or unexpected keys or on shape mismatches, all named.
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


def _clip(items: list[str], limit: int = 10) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return str(items[:limit]) + more


class Identifier(PretrainedMixin, nn.Module):
    """Backbone -> pooling -> neck -> (optional) ArcFace head.

    ``Identifier.from_pretrained(name_or_path, ..., allow_pickle=False)`` loads
    ``"embedded"`` (the bundled trained model, offline), ``"embedded-imagenet"`` (its
    untrained ImageNet backbone), a folder written by :meth:`save_pretrained` or holding
    the legacy EcoMarineAI files, or a Hub repository (see
    :meth:`~ecomarine._pretrained.PretrainedMixin.from_pretrained` for the Hub keywords).
    ``allow_pickle=True`` lets the legacy import unpickle arbitrary objects: only for
    files you trust, since unpickling can run any code (else
    :class:`~ecomarine.errors.UnsafeFileError`).

    Args:
        config: Architecture and preprocessing.
        labels: Known individual ids, one per head row (required for a head).
        species: Species label per individual id, when known.

    Example:
        >>> ident = Identifier.from_pretrained("embedded")  # doctest: +SKIP
        >>> ident.embed(["whale.jpg"]).shape  # doctest: +SKIP
        (1, 512)
    """

    push_message = "Upload ecomarine identifier"

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
        # Members 2.. of an ensemble (keys _MEMBER_PREFIX); empty (no tensors) for a single
        # network, so that single-network weight files keep their key names.
        self.extra_members = nn.ModuleList(_Member(config) for _ in range(config.members - 1))
        self.num_features = features * config.members
        self.embedding_size = embedding * config.members
        self.head: ArcMarginProduct | SubCenterArcMarginProduct | None = None
        if config.head is not None:
            if not self.labels:
                raise ConfigError("a head needs labels (the known individual ids)")
            self.head = build_head(config.head, self.embedding_size, len(self.labels))
        #: Frozen inference graphs (BatchNorm folded), see :mod:`ecomarine._fuse`; set
        #: ``identifier.fused.enabled = False`` for the eager path.
        self.fused = FusedCache()
        self.eval()

    def train(self, mode: bool = True) -> Identifier:
        """Set training mode; forgets the fused graphs when training starts or ends."""
        fused = self.__dict__.get("fused")
        if fused is not None and (mode or self.training):  # eval() on eval: weights unchanged
            fused.clear()
        super().train(mode)
        return self

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        """As :meth:`torch.nn.Module.load_state_dict`; also forgets the fused graphs."""
        fused = self.__dict__.get("fused")
        if fused is not None:
            fused.clear()
        return super().load_state_dict(state_dict, *args, **kwargs)

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
        return [_pool_member(bb, pool, x) for bb, pool, _ in self._members()]

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
        return self.imagenet_outputs(x)[1]

    def imagenet_outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The backbone's pooled features and its own classifier's logits, in one pass.

        Raises:
            ConfigError: Without a backbone classifier (``backbone_num_classes == 0``).
        """
        if self.config.backbone_num_classes == 0:
            raise ConfigError("this identifier has no backbone classifier")
        if not self.training and not torch.is_grad_enabled():
            fused = self.fused.run("imagenet", lambda: Traced(self, self._imagenet_tuple), x)
            if fused is not None:
                return fused[0], fused[1]
        pooled, logits = self._imagenet_tuple(x)
        return pooled, logits

    def _imagenet_tuple(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # timm's forward_head is global pool -> (dropout) -> classifier; split to keep both.
        pooled: Tensor = self.backbone.forward_head(self.forward_features(x), pre_logits=True)
        logits: Tensor = self.backbone.get_classifier()(pooled)
        return pooled, logits

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
        flip = self.config.test_time_flip
        with torch.inference_mode():
            # Test-time flip: the mirror images ride in the same pass (one bigger batch).
            x = conv_layout(torch.cat([batch, batch.flip(3)]) if flip else batch, self.device)
            fused = (
                None
                if self.training
                else self.fused.run("members", lambda: Traced(self, self._all_kinds), x)
            )
            n = 1 + len(self.extra_members)
            if fused is not None:
                features, embeddings = list(fused[:n]), list(fused[n:])
            else:
                features = self._member_features(x)
                embeddings = self._member_embeddings(features) if "embedding" in wanted else []
            out: dict[EmbeddingKind, Tensor] = {}
            if "features" in wanted:
                out["features"] = _concat_unit(features)
            if "embedding" in wanted:
                out["embedding"] = _concat_unit(embeddings)
            if flip:
                half = batch.shape[0]
                out = {k: F.normalize(v[:half] + v[half:], dim=1) for k, v in out.items()}
            return out

    def _all_kinds(self, x: Tensor) -> tuple[Tensor, ...]:
        """Every member's pooled features, then every member's embedding (one graph)."""
        features = self._member_features(x)
        return (*features, *self._member_embeddings(features))

    def embed(
        self,
        images: Sequence[ImageSource] | ImageSource,
        *,
        batch_size: int = 32,
        kind: EmbeddingKind = "embedding",
        num_workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Embed photos as unit-norm rows.

        Args:
            images: One image source or a sequence of them (anything
                :func:`~ecomarine.io.load_image` accepts).
            batch_size: Images per network pass.
            kind: ``"embedding"`` (trained) or ``"features"`` (general pooled features).
            num_workers: Decode threads (default: CPU count, at most 8).
            progress: Called with the number of photos embedded after each batch.

        Returns:
            ``(N, D)`` float32 array with unit L2 norm rows.

        Raises:
            InvalidImageError: If an image cannot be read.
        """
        return self.embed_kinds(
            images, kinds=(kind,), batch_size=batch_size, num_workers=num_workers, progress=progress
        )[kind]

    def embed_kinds(
        self,
        images: Sequence[ImageSource] | ImageSource,
        *,
        kinds: Sequence[EmbeddingKind] = ("embedding", "features"),
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: Callable[[int], None] | None = None,
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
            if progress is not None:
                progress(len(batch))
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
        return self.config.threshold_for(kind)

    @property
    def new_individual_threshold(self) -> float | None:
        """Open-set threshold of the trained embedding (from ``config.json``)."""
        return self.config.threshold_for("embedding")

    def fingerprint(self, kind: EmbeddingKind = "embedding") -> str:
        """A hash of the architecture, preprocessing and weights that make an embedding.

        Galleries store it and refuse to mix vectors from different models or kinds.
        """
        digest = hashlib.sha256()
        arch = self.config.architecture_dict()
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

    @classmethod
    def _from_source(cls, request: LoadRequest, *, allow_pickle: bool = False) -> Identifier:
        model = build_identifier(identifier_parts(request.source(), allow_pickle=allow_pickle))
        announce_license(model.config)
        return model.to(resolve_device(request.device)).eval()

    # --- ensembles: the weight layout ---------------------------------------------------

    def networks(self) -> list[dict[str, Tensor]]:
        """Each network's own tensors (backbone, pooling, neck) under single-network names.

        A single network gives one; an ensemble one per member. The head is not included
        (see :meth:`network_head_weights`).
        """
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        out = []
        for i in range(self.config.members):
            prefix = "" if i == 0 else _MEMBER_PREFIX.format(i - 1)
            out.append(
                {
                    k[len(prefix) :]: v
                    for k, v in state.items()
                    if k.startswith(prefix) and k[len(prefix) :].split(".", 1)[0] in _NETWORK_PARTS
                }
            )
        return out

    def network_head_weights(self) -> list[Tensor]:
        """Each network's slice of the ArcFace class weights (one slice for a single network).

        Raises:
            ConfigError: Without a plain ArcFace head.
        """
        if not isinstance(self.head, ArcMarginProduct):
            raise ConfigError("expected an identifier with a plain ArcFace head")
        weight = self.head.weight.detach().cpu().float()
        width = self.embedding_size // self.config.members
        return [weight[:, i * width : (i + 1) * width].clone() for i in range(self.config.members)]

    @classmethod
    def from_networks(
        cls,
        config: IdentifierConfig,
        networks: Sequence[Mapping[str, Tensor]],
        *,
        labels: Sequence[str] = (),
        species: Mapping[str, str] | None = None,
        head_weights: Sequence[Tensor] | None = None,
    ) -> Identifier:
        """An identifier made of networks' tensors (an ensemble for two or more).

        Args:
            config: The identifier's config; ``config.members`` must equal ``len(networks)``.
            networks: Per network, tensors as :meth:`networks` gives them.
            labels: Individual ids of the head.
            species: Species per individual id.
            head_weights: Per network, its ArcFace class weights (``config.head`` must be
                set). For an ensemble each is normalised and they are concatenated, so the
                ensemble's head cosines are the mean of the networks' (its embedding is the
                scaled concatenation of the networks' unit-norm embeddings).

        Raises:
            ConfigError: A count that does not match, or tensors that do not fit.
        """
        if config.members != len(networks):
            raise ConfigError(f"config has {config.members} members, got {len(networks)} networks")
        state: dict[str, Tensor] = {}
        for i, net in enumerate(networks):
            prefix = "" if i == 0 else _MEMBER_PREFIX.format(i - 1)
            state.update({prefix + k: v for k, v in net.items()})
        if head_weights is not None:
            weights = [w.detach().cpu().float() for w in head_weights]
            if len(weights) > 1:
                weights = [F.normalize(w, dim=1) for w in weights]
            state["head.weight"] = torch.cat(weights, dim=1)
        model = cls(config, labels, species)
        check_state_dict(model, state, f"{config.name} networks")
        return model.eval()


def build_identifier(parts: IdentifierParts) -> Identifier:
    """The identifier of some parts, every tensor checked against the architecture.

    Raises:
        ConfigError: Missing, unexpected or mis-shaped tensors (named), or an invalid
            config.
    """
    # The architecture is first built on the meta device (no memory), so that a config
    # claiming sizes its weights do not have is refused before anything is allocated.
    with torch.device("meta"):
        probe = Identifier(parts.config, parts.labels, dict(parts.species))
    check_state_shapes(probe, parts.state, parts.where)
    del probe
    bad = [
        key
        for key, tensor in parts.state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise ConfigError(f"{parts.where}: weights contain NaN or infinite values in {_clip(bad)}")
    model = Identifier(parts.config, parts.labels, dict(parts.species))
    check_state_dict(model, parts.state, parts.where)
    return model.eval()


def _as_list(images: Sequence[ImageSource] | ImageSource) -> list[ImageSource]:
    # A single source (str/bytes are Sequences too) becomes a one-item list.
    if isinstance(images, list | tuple):
        return list(images)
    if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike | np.ndarray):
        return [images]
    if hasattr(images, "read") or hasattr(images, "getpixel"):
        return [images]  # type: ignore[list-item]
    return list(images)


def announce_license(config: IdentifierConfig) -> None:
    """Say the licence of imported weights at load (a warning when non-commercial)."""
    if config.license is None:
        return
    where = config.source or config.name
    says = logging.getLogger(LICENSE_LOGGER)
    if non_commercial(config.license):
        says.warning(
            "model %s: weights licensed %s: non-commercial use only", where, config.license
        )
    else:
        says.info("model %s: weights licensed %s", where, config.license)


def _build_member(config: IdentifierConfig) -> tuple[Any, nn.Module, nn.Module, int, int]:
    """Backbone, pooling and neck of one network; with its feature and embedding sizes."""
    backbone = build_backbone(config)
    features = int(backbone.num_features)
    pool: nn.Module
    if config.pooling == "gem2":
        pool = _TwoStageGeM(backbone, config.backbone)
        features += pool.extra_features
    else:
        pool = {"gem": GeM, "avg": _AvgPool, "backbone": _OwnPooling}[config.pooling]()
    size = config.embedding_size
    neck: nn.Module
    if config.neck == "bn":
        neck = nn.Sequential(nn.Linear(features, size), nn.BatchNorm1d(size))
    elif config.neck == "linear":
        neck = nn.Linear(features, size)
    elif config.neck == "batchnorm":
        neck, size = nn.BatchNorm1d(features), features
    else:
        neck, size = nn.Identity(), features
    return backbone, pool, neck, features, size


def _pool_member(backbone: Any, pool: nn.Module, x: Tensor) -> Tensor:
    """One network's pooled features: its own pooling, or ecomarine's over its feature map."""
    if isinstance(pool, _OwnPooling):
        out: Tensor = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
        return out
    if isinstance(pool, _TwoStageGeM):
        return pool.pool_backbone(backbone, x)
    pooled: Tensor = pool(backbone.forward_features(x))
    return pooled


class _Member(nn.Module):
    """One further network of an ensemble (the first one is the identifier's own)."""

    def __init__(self, config: IdentifierConfig) -> None:
        super().__init__()
        self.backbone: Any
        self.backbone, self.pool, self.neck, _, _ = _build_member(config)


def _check_kinds(kinds: Sequence[EmbeddingKind]) -> tuple[EmbeddingKind, ...]:
    wanted = tuple(dict.fromkeys(kinds))
    bad = [k for k in wanted if k not in EMBEDDING_KINDS]
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


class _TwoStageGeM(nn.Module):
    """GeM over the final feature map and over the stage before the last reduction.

    The earlier map has twice the resolution: small nicks and scars that the final map
    blurs. Each level has its own exponent; the pooled vectors are concatenated (final
    first).
    """

    def __init__(self, backbone: Any, name: str) -> None:
        super().__init__()
        info = getattr(backbone, "feature_info", None)
        if not hasattr(backbone, "forward_intermediates") or not info or len(info) < 2:
            raise ConfigError(
                f"pooling 'gem2' needs a timm backbone with forward_intermediates and "
                f"feature_info; {name!r} has not"
            )
        self.level = len(info) - 2
        self.extra_features = int(info[self.level]["num_chs"])
        self.final = GeM()
        self.earlier = GeM()

    def pool_backbone(self, backbone: Any, x: Tensor) -> Tensor:
        """Pooled ``(B, final + earlier channels)`` features of ``backbone`` on ``x``."""
        final, (earlier,) = backbone.forward_intermediates(x, indices=[self.level])
        return torch.cat([self.final(final), self.earlier(earlier)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Only the final map's part (the backbone's call goes through pool_backbone)."""
        out: Tensor = self.final(x)
        return out


class _OwnPooling(nn.Module):
    """Marks a network that pools itself (``pooling="backbone"``); see :func:`_pool_member`."""

    def forward(self, x: Tensor) -> Tensor:
        return x
