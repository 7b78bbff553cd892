"""Training data: an in-memory image cache, augmentation, samplers.

Catalogue CSVs are read by :mod:`ecomarine.catalog` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F  # noqa: N812 - the usual alias

from ..catalog import Sample, read_catalog_csv, split_by_group_hash
from ..config import PreprocessConfig
from ..errors import DataError, InvalidImageError
from ..io import load_image
from ..transforms import thread_map
from .config import AugmentConfig

__all__ = [
    "AugmentConfig",
    "CatalogImages",
    "IdentitySampler",
    "Sample",
    "cache_view",
    "read_catalog_csv",
    "split_by_group_hash",
]

logger = logging.getLogger(__name__)


def cache_view(path: Path, pp: PreprocessConfig, pad: float) -> Image.Image:
    """One photo as the training cache holds it: resized to the input size plus ``pad``.

    Random crops of the input size from this view shift the animal by up to ``pad``.

    Raises:
        InvalidImageError: The file cannot be read as an image.
    """
    from ..transforms import resize  # noqa: PLC0415

    padded = dataclasses.replace(
        pp, input_size=(round(pp.height * (1 + pad)), round(pp.width * (1 + pad)))
    )
    img = load_image(path, target_size=(padded.width, padded.height))
    return resize(img, padded)


class CatalogImages:
    """Decoded, resized training images held in memory as uint8 arrays.

    Catalogue crops are small; decoding each once (in threads) instead of every epoch
    makes CPU training several times faster.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        pp: PreprocessConfig,
        augment: AugmentConfig | None = None,
        *,
        workers: int = 2,
    ) -> None:
        self.samples = list(samples)
        self.pp = pp
        self.augment = augment or AugmentConfig()
        pad = self.augment.pad

        def decode(s: Sample) -> np.ndarray[Any, np.dtype[np.uint8]]:
            try:
                return np.asarray(cache_view(s.path, pp, pad), dtype=np.uint8)
            except InvalidImageError as exc:
                raise DataError(f"training image unreadable: {exc}") from exc

        self.arrays = list(thread_map(decode, self.samples, workers))
        self._mean = np.asarray(pp.mean, np.float32).reshape(3, 1, 1)
        self._std = np.asarray(pp.std, np.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def _normalise(self, arr: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        x = arr.astype(np.float32).transpose(2, 0, 1) / 255.0
        return ((x - self._mean) / self._std).astype(np.float32)

    def center(self, i: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The un-augmented input for sample ``i`` (the central crop)."""
        arr = self.arrays[i]
        top = (arr.shape[0] - self.pp.height) // 2
        left = (arr.shape[1] - self.pp.width) // 2
        return self._normalise(arr[top : top + self.pp.height, left : left + self.pp.width])

    def augmented(self, i: int, rng: np.random.Generator) -> np.ndarray[Any, np.dtype[np.float32]]:
        """A randomly shifted, jittered (and, if enabled, flipped) input for sample ``i``."""
        arr = self.arrays[i]
        h, w = self.pp.height, self.pp.width
        top = int(rng.integers(0, arr.shape[0] - h + 1))
        left = int(rng.integers(0, arr.shape[1] - w + 1))
        crop = arr[top : top + h, left : left + w].astype(np.float32)
        a = self.augment
        if a.hflip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        if a.vflip and rng.random() < 0.5:
            crop = crop[::-1]
        if a.contrast:
            mean = crop.mean()
            crop = (crop - mean) * (1.0 + rng.uniform(-a.contrast, a.contrast)) + mean
        if a.brightness:
            crop = crop * (1.0 + rng.uniform(-a.brightness, a.brightness))
        return self._normalise(np.clip(crop, 0, 255))

    def batch(self, indices: Sequence[int], rng: np.random.Generator | None) -> torch.Tensor:
        """Stack inputs for ``indices``: augmented when ``rng`` is given, else central."""
        if rng is not None and self.augment.geometric:
            out = self._warped(indices, rng)
        else:
            arrays = [self.center(i) if rng is None else self.augmented(i, rng) for i in indices]
            out = torch.from_numpy(np.stack(arrays))
        if rng is not None and self.augment.erase > 0:
            _erase(out, self.augment.erase, rng)
        return out

    def _warped(self, indices: Sequence[int], rng: np.random.Generator) -> torch.Tensor:
        """Rotate, zoom, shift and jitter a whole batch at once (one ``grid_sample``)."""
        a = self.augment
        n = len(indices)
        x = torch.from_numpy(np.stack([self.arrays[i] for i in indices])).permute(0, 3, 1, 2)
        x = x.float() / 255.0
        hp, wp = x.shape[2], x.shape[3]
        h, w = self.pp.height, self.pp.width
        angle = np.deg2rad(rng.uniform(-a.rotate, a.rotate, n))
        zoom = np.exp(rng.uniform(-np.log1p(a.zoom), np.log1p(a.zoom), n))
        shift_x = rng.uniform(-1, 1, n) * (wp - w) / wp
        shift_y = rng.uniform(-1, 1, n) * (hp - h) / hp
        cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
        # Output pixel offsets (centred) -> rotated/zoomed input offsets, both written in
        # grid_sample's normalised coordinates, which scale x and y differently.
        theta = np.zeros((n, 2, 3), np.float32)
        theta[:, 0, 0] = cos * w / wp
        theta[:, 0, 1] = -sin * h / wp
        theta[:, 1, 0] = sin * w / hp
        theta[:, 1, 1] = cos * h / hp
        theta[:, 0, 2] = shift_x
        theta[:, 1, 2] = shift_y
        grid = F.affine_grid(torch.from_numpy(theta), [n, 3, h, w], align_corners=False)
        out = F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        if a.hflip:
            flip = torch.from_numpy(rng.random(n) < 0.5)
            out[flip] = out[flip].flip(3)
        if a.vflip:
            flip = torch.from_numpy(rng.random(n) < 0.5)
            out[flip] = out[flip].flip(2)
        if a.contrast:
            c = torch.from_numpy(1.0 + rng.uniform(-a.contrast, a.contrast, n)).float()
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * c.view(n, 1, 1, 1) + mean
        if a.brightness:
            b = torch.from_numpy(1.0 + rng.uniform(-a.brightness, a.brightness, n)).float()
            out = out * b.view(n, 1, 1, 1)
        out = out.clamp(0.0, 1.0)
        mean = torch.from_numpy(self._mean).view(1, 3, 1, 1)
        std = torch.from_numpy(self._std).view(1, 3, 1, 1)
        # Channels-last: oneDNN's convolutions are several times faster on NHWC input.
        return ((out - mean) / std).contiguous(memory_format=torch.channels_last)


def _erase(batch: torch.Tensor, p: float, rng: np.random.Generator) -> None:
    """Random erasing, in place: one rectangle per chosen image set to the mean (0)."""
    n, _, h, w = batch.shape
    for k in range(n):
        if rng.random() >= p:
            continue
        area = rng.uniform(0.02, 0.2) * h * w
        aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
        eh = min(h, max(1, round(np.sqrt(area * aspect))))
        ew = min(w, max(1, round(np.sqrt(area / aspect))))
        top = int(rng.integers(0, h - eh + 1))
        left = int(rng.integers(0, w - ew + 1))
        batch[k, :, top : top + eh, left : left + ew] = 0.0


class IdentitySampler:
    """Batches of ``ids_per_batch`` identities with ``images_per_id`` photos each.

    Identities with fewer photos are sampled with replacement. One epoch visits every
    identity about ``len(samples) / (ids_per_batch * images_per_id)`` times in total.

    With ``groups`` (each photo's encounter), an identity's photos in a batch come from
    as many different encounters as it has, one photo each, before any encounter gives a
    second: the positives then differ in light, angle and season, not only in frame.
    """

    def __init__(
        self,
        labels: Sequence[int],
        ids_per_batch: int,
        images_per_id: int,
        rng: np.random.Generator,
        groups: Sequence[str] | None = None,
    ) -> None:
        if ids_per_batch < 1 or images_per_id < 1:
            raise DataError("ids_per_batch and images_per_id must be >= 1")
        if groups is not None and len(groups) != len(labels):
            raise DataError("one group (encounter) per photo is needed")
        self.by_id: dict[int, list[int]] = defaultdict(list)
        self.by_group: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, label in enumerate(labels):
            self.by_id[int(label)].append(i)
            if groups is not None:
                self.by_group[int(label)][groups[i]].append(i)
        self.ids_per_batch = min(ids_per_batch, len(self.by_id))
        self.images_per_id = images_per_id
        self.n_batches = max(1, len(labels) // (self.ids_per_batch * images_per_id))
        self.rng = rng

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[int]]:
        ids = np.array(sorted(self.by_id))
        for _ in range(self.n_batches):
            chosen = self.rng.choice(ids, size=self.ids_per_batch, replace=False)
            batch: list[int] = []
            for label in chosen.tolist():
                if self.by_group:
                    batch += self._across_groups(label)
                    continue
                pool = self.by_id[label]
                replace = len(pool) < self.images_per_id
                batch += self.rng.choice(pool, size=self.images_per_id, replace=replace).tolist()
            yield batch

    def _across_groups(self, label: int) -> list[int]:
        """``images_per_id`` photos of one identity, spread over its encounters."""
        groups = list(self.by_group[label].values())
        picked: list[int] = []
        while len(picked) < self.images_per_id:
            # Each round takes one photo from each encounter, in a fresh random order.
            for g in self.rng.permutation(len(groups)).tolist():
                if len(picked) == self.images_per_id:
                    break
                picked.append(int(self.rng.choice(groups[g])))
        return picked
