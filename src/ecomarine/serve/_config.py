"""The service's limits and switches (one frozen dataclass, validated once)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ServeConfig"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """What :func:`~ecomarine.serve.create_app` needs besides the pipeline.

    Every limit is checked before an image is decoded; a request over one gets a 4xx with
    a JSON error, never a 500.

    Attributes:
        token: Bearer token required on every ``/v1`` endpoint (``None``: no token; only
            allowed on a loopback bind, which :func:`~ecomarine.serve.serve` enforces).
        gallery_dir: The gallery folder that ``POST /v1/individuals/{id}/photos`` enrolls
            into (``None``: the service is read-only).
        max_batch: Photos per network pass.
        max_wait_ms: How long the first photo of a batch waits for company.
        max_queue: Photos waiting at most; beyond it requests get 503 (try again).
        max_upload_bytes: Largest request body.
        max_files: Most photos in one request (multipart files or ZIP entries).
        max_zip_uncompressed: Largest total uncompressed size of a ZIP's entries.
        max_zip_ratio: Largest uncompressed/compressed ratio of any ZIP entry.
    """

    token: str | None = None
    gallery_dir: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_upload_bytes: int = 64 * _MIB
    max_files: int = 256
    max_zip_uncompressed: int = 512 * _MIB
    max_zip_ratio: float = 100.0

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_upload_bytes", "max_files"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ConfigError("max_wait_ms must be in [0, 1000]")
        if self.max_zip_uncompressed < 1 or self.max_zip_ratio < 1:
            raise ConfigError("ZIP limits must be positive")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("a service token must be at least 16 characters")
