"""``ecomarine serve``: the pipeline as an HTTP service (optional extra ``serve``).

:func:`create_app` builds the FastAPI application (embed it in any ASGI server);
:func:`serve` runs it with uvicorn, on loopback unless a token protects it.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..pipeline import Pipeline
from ._config import ServeConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ServeConfig", "create_app", "is_loopback", "serve"]

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only ever means this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(pipeline: Pipeline, config: ServeConfig | None = None) -> FastAPI:
    """The service as a FastAPI application (see :mod:`ecomarine.serve._app`).

    Raises:
        ConfigError: Without the ``serve`` extra (FastAPI, uvicorn, python-multipart).
    """
    try:
        from ._app import create_app as build  # noqa: PLC0415 - optional dependencies
    except ImportError as exc:
        raise ConfigError(
            f'the service needs the "serve" extra: pip install "ecomarine[serve]" ({exc})'
        ) from exc
    return build(pipeline, config)


def serve(
    pipeline: Pipeline,
    config: ServeConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
) -> None:
    """Run the service with uvicorn until interrupted (graceful on SIGINT/SIGTERM).

    Raises:
        ConfigError: When binding beyond loopback without a token, or without the extra.
    """
    cfg = config or ServeConfig()
    if not is_loopback(host) and cfg.token is None:
        raise ConfigError(
            f"binding to {host} makes the service reachable from other machines: "
            "give it a token (--token-file)"
        )
    if workers != 1:
        # Each uvicorn worker process would load its own copy of the model and gallery and
        # enrolment would race across them; one process batches better on one machine.
        raise ConfigError("run one worker per machine (batching happens inside it)")
    try:
        import uvicorn  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ConfigError(
            'the service needs the "serve" extra: pip install "ecomarine[serve]"'
        ) from exc
    app = create_app(pipeline, cfg)
    # uvicorn's own logging set-up, plus the service's access log (one JSON object per
    # request, with its request id).
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["ecomarine"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    logger.info("serving on http://%s:%d", host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=log_config,
        access_log=False,  # the service's own access log carries the request id
        timeout_graceful_shutdown=30,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
