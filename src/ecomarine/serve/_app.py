"""The FastAPI application: versioned JSON endpoints over one :class:`Pipeline`."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__
from ..gallery import Gallery
from ..pipeline import Pipeline
from ..types import Prediction
from ._batcher import Batcher, BusyError, ClosedError
from ._config import ServeConfig
from ._errors import SAFE_ID, RequestError, error_response, install_error_handlers
from ._uploads import read_zip

__all__ = ["create_app"]

logger = logging.getLogger("ecomarine.serve")

_ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
_BOUNDARY = re.compile(r'boundary="?([^";,\s]{1,200})"?', re.IGNORECASE)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_BINARY = {"type": "string", "format": "binary"}


def _body(fields: dict[str, Any], required: str, raw: tuple[str, ...]) -> dict[str, Any]:
    """An OpenAPI request body: a multipart form with ``fields``, or a raw body."""
    form = {"type": "object", "properties": fields, "required": [required]}
    content = {"multipart/form-data": {"schema": form}} | {t: {"schema": _BINARY} for t in raw}
    return {"requestBody": {"required": True, "content": content}}


_FILES = {"type": "array", "items": _BINARY}
_ONE_PHOTO = _body({"file": _BINARY}, "file", ("application/octet-stream", "image/jpeg"))
_MANY_PHOTOS = _body({"files": _FILES}, "files", ("application/zip",))
_SIGHTING = _body(
    {"sighting_id": {"type": "string"}, "files": _FILES}, "files", ("application/zip",)
)
_ERROR = {"description": 'A JSON error: {"error": code, "detail": sentence}'}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _ERROR,
    401: _ERROR,
    404: _ERROR,
    409: _ERROR,
    413: _ERROR,
    415: _ERROR,
    422: _ERROR,
    503: _ERROR,
}


class _BodyTooLargeError(Exception):
    pass


class _Limits:
    """ASGI middleware: request ids, structured access logs, and the body size cap.

    The cap is enforced on the bytes as they arrive (a missing or lying Content-Length
    does not help), before anything is parsed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")
        rid = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        declared = headers.get("content-length", "")
        too_big = declared.isdigit() and int(declared) > self.max_bytes
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLargeError
            return message

        try:
            if too_big:
                raise _BodyTooLargeError
            await self.app(scope, counted, send_with_id)
        except _BodyTooLargeError:
            if not status["sent"]:
                detail = f"request body over {self.max_bytes} bytes"
                await error_response(413, "too_large", detail)(scope, receive, send_with_id)
        finally:
            logger.info(
                json.dumps(
                    {
                        "request_id": rid,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status["code"],
                        "ms": round(1000 * (time.perf_counter() - started), 1),
                    }
                )
            )


def create_app(pipeline: Pipeline, config: ServeConfig | None = None) -> FastAPI:
    """The service as an ASGI application, for uvicorn or any ASGI server.

    Args:
        pipeline: What answers the requests (its gallery, if any, is searched).
        config: Limits, token and the gallery folder to enroll into.

    Example:
        >>> app = create_app(Pipeline.from_pretrained("embedded"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    cfg = config or ServeConfig()
    state: dict[str, Batcher] = {}
    gate_print = _gate_fingerprint(pipeline)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = Batcher(
            pipeline,
            max_batch=cfg.max_batch,
            max_wait=cfg.max_wait_ms / 1000,
            max_queue=cfg.max_queue,
        )
        try:
            yield
        finally:
            # Graceful: the queued work finishes before the worker stops.
            await asyncio.to_thread(state.pop("batcher").close)

    app = FastAPI(
        title="ecomarine",
        version=__version__,
        summary="Photo-identification of whales and dolphins",
        lifespan=lifespan,
    )
    app.add_middleware(_Limits, max_bytes=cfg.max_upload_bytes)

    def batcher() -> Batcher:
        b = state.get("batcher")
        if b is None:
            raise RequestError(503, "not_ready", "the model is not loaded yet")
        return b

    async def on_worker(fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(batcher().call(fn))

    async def authorised(request: Request) -> None:
        if cfg.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("utf-8", "replace"), cfg.token.encode("utf-8")
        )
        if not ok:
            raise RequestError(401, "unauthorized", "a valid bearer token is required")

    # --- errors: always JSON, never a traceback --------------------------------------------

    install_error_handlers(app, {404: "not_found", 405: "method_not_allowed"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", str(exc.errors()[:3]))

    @app.exception_handler(BusyError)
    async def _busy(request: Request, exc: BusyError) -> JSONResponse:
        return error_response(503, "busy", str(exc), {"retry-after": "1"})

    @app.exception_handler(ClosedError)
    async def _closed(request: Request, exc: ClosedError) -> JSONResponse:
        return error_response(503, "shutting_down", str(exc))

    # --- reading photos out of a request ---------------------------------------------------

    async def photos_of(
        request: Request, *, many: bool
    ) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        """``[(name, bytes)]`` and the plain form fields of a request."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            # A body cut short is refused before parsing: the parser would return the parts
            # it finished and silently drop (and leak) the last one.
            body = await request.body()
            boundary = _BOUNDARY.search(request.headers.get("content-type", ""))
            end = b"--" + boundary.group(1).encode("latin-1") + b"--" if boundary else None
            if end is None or not body.rstrip(b"\r\n").endswith(end):
                raise RequestError(400, "truncated_multipart", "the multipart body is incomplete")
            files: list[tuple[str, bytes]] = []
            fields: dict[str, str] = {}
            async with request.form(max_files=cfg.max_files, max_fields=32) as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        data = await value.read()
                        name = value.filename or key
                        is_zip = name.lower().endswith(".zip") or value.content_type in _ZIP_TYPES
                        if many and is_zip:
                            files += await asyncio.to_thread(read_zip, data, cfg)
                        else:
                            files.append((name, data))
                    else:
                        fields[key] = str(value)[:256]
            if len(files) > cfg.max_files:
                raise RequestError(
                    413, "too_many_files", f"at most {cfg.max_files} photos per request"
                )
        elif many and ctype in _ZIP_TYPES:
            files = await asyncio.to_thread(read_zip, await request.body(), cfg)
            fields = {}
        elif not many and ctype and ctype != "application/x-www-form-urlencoded":
            files, fields = [("body", await request.body())], {}
        else:
            expected = (
                "multipart/form-data or application/zip"
                if many
                else "an image body or multipart/form-data"
            )
            raise RequestError(415, "unsupported_media_type", f"send {expected}")
        files = [(n, d) for n, d in files if d]
        if not files:
            raise RequestError(400, "no_photos", "the request holds no photo")
        if not many and len(files) != 1:
            raise RequestError(400, "one_photo", "send exactly one photo (see /v1/predict-batch)")
        return files, fields

    # --- endpoints -------------------------------------------------------------------------

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"], responses={503: _ERROR})
    async def ready() -> dict[str, bool]:
        """Readiness: the model is loaded and the worker runs."""
        batcher()
        return {"ready": True}

    v1 = [Depends(authorised)]

    @app.get("/v1/model", tags=["model"], dependencies=v1, responses=_ERRORS)
    async def model() -> dict[str, Any]:
        """The model, gate and gallery this service answers with."""
        b = batcher()
        ident = pipeline.identifier
        gate = pipeline.gate
        gallery = pipeline.gallery
        return {
            "ecomarine_version": __version__,
            "model": ident.config.name,
            "fingerprint": ident.fingerprint(pipeline.embedding_kind),
            "embedding_kind": pipeline.embedding_kind,
            "input_size": list(ident.config.preprocess.input_size),
            "new_individual_threshold": pipeline.new_individual_threshold,
            "sighting_threshold": pipeline.sighting_threshold,
            "gate": None
            if gate is None
            else {"backend": gate.name, "threshold": gate.threshold, "fingerprint": gate_print},
            "gallery": None
            if gallery is None
            else {"photos": len(gallery), "individuals": len(gallery.individuals())},
            "license": _license_of(pipeline),
            "served": {"photos": b.photos, "batches": b.batches, "waiting": b.waiting},
            "max_batch": cfg.max_batch,
            "max_files": cfg.max_files,
            "max_upload_bytes": cfg.max_upload_bytes,
        }

    @app.post(
        "/v1/predict",
        tags=["predict"],
        dependencies=v1,
        responses=_ERRORS,
        openapi_extra=_ONE_PHOTO,
    )
    async def predict(request: Request) -> dict[str, Any]:
        """One photo (a multipart ``file`` or the raw body) -> its prediction."""
        files, _ = await photos_of(request, many=False)
        ((name, data),) = files
        pred: Prediction = (await asyncio.wrap_future(batcher().predict([name], [data])))[0]
        if pred.rejection_reason == "unreadable_image":
            raise RequestError(422, "unreadable_image", pred.error or "the photo cannot be read")
        if pred.rejection_reason == "image_too_large":
            raise RequestError(413, "image_too_large", pred.error or "the photo is too large")
        return pred.to_dict()

    @app.post(
        "/v1/predict-batch",
        tags=["predict"],
        dependencies=v1,
        responses={200: {"content": {"application/x-ndjson": {}}}, **_ERRORS},
        openapi_extra=_MANY_PHOTOS,
    )
    async def predict_batch(request: Request) -> StreamingResponse:
        """Several photos (multipart files, or a ZIP) -> one JSON line per photo, in order.

        Lines stream as soon as each photo is answered; an unreadable photo is a line with
        its ``rejection_reason``, never a failed request.
        """
        files, _ = await photos_of(request, many=True)
        b = batcher()
        futures = [b.predict([n], [d]) for n, d in files]  # queued now: batched with others

        async def lines() -> AsyncIterator[bytes]:
            for fut in futures:
                (pred,) = await asyncio.wrap_future(fut)
                yield (json.dumps(pred.to_dict()) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post(
        "/v1/sightings",
        tags=["predict"],
        dependencies=v1,
        responses=_ERRORS,
        openapi_extra=_SIGHTING,
    )
    async def sightings(request: Request) -> dict[str, Any]:
        """The photos of one sighting (one animal) -> the sighting's prediction."""
        files, fields = await photos_of(request, many=True)
        sid = fields.get("sighting_id") or "sighting"
        if not SAFE_ID.match(sid):
            raise RequestError(
                400, "bad_id", "sighting_id: 1-128 characters, no control characters or slashes"
            )
        names = [n for n, _ in files]
        data = [d for _, d in files]
        result = await on_worker(
            lambda: pipeline.predict_sightings({sid: data}, photo_names={sid: names})[0]
        )
        return result.to_dict()  # type: ignore[no-any-return]

    def gallery_or_404() -> Gallery:
        if pipeline.gallery is None:
            raise RequestError(404, "no_gallery", "this service was started without a gallery")
        return pipeline.gallery

    @app.get("/v1/individuals", tags=["gallery"], dependencies=v1, responses=_ERRORS)
    async def individuals() -> dict[str, Any]:
        """Every catalogued individual, with its photo count, species and dates."""

        def listing() -> list[dict[str, Any]]:
            return [dataclasses.asdict(s) for s in gallery_or_404().summaries()]

        return {"individuals": await on_worker(listing)}

    @app.get(
        "/v1/individuals/{individual_id}", tags=["gallery"], dependencies=v1, responses=_ERRORS
    )
    async def individual(individual_id: str) -> dict[str, Any]:
        """One catalogued individual."""

        def one() -> dict[str, Any]:
            for s in gallery_or_404().summaries():
                if s.individual_id == individual_id:
                    return dataclasses.asdict(s)
            raise RequestError(404, "unknown_individual", f"no individual {individual_id!r}")

        return await on_worker(one)  # type: ignore[no-any-return]

    @app.post(
        "/v1/individuals/{individual_id}/photos",
        tags=["gallery"],
        dependencies=v1,
        responses=_ERRORS,
        openapi_extra=_MANY_PHOTOS,
    )
    async def enroll(individual_id: str, request: Request) -> dict[str, Any]:
        """Enroll confirmed photos of an individual (created if new); the gallery is saved.

        The gallery folder is locked across load, add and save, as the CLI does, so a
        concurrent ``ecomarine gallery add`` never loses photos.
        """
        if cfg.gallery_dir is None:
            raise RequestError(
                409, "read_only", "start the service with --gallery to enroll photos"
            )
        if not SAFE_ID.match(individual_id):
            raise RequestError(
                400, "bad_id", "individual id: 1-128 characters, no control characters or slashes"
            )
        files, fields = await photos_of(request, many=True)
        species = fields.get("species") or None
        gallery_dir = cfg.gallery_dir

        def add() -> dict[str, Any]:
            with Gallery.update(gallery_dir) as fresh:
                before = pipeline.gallery
                pipeline.attach_gallery(fresh)
                try:
                    added = pipeline.enroll(
                        [d for _, d in files],
                        [individual_id] * len(files),
                        species,
                        [{"source": n} for n, _ in files],
                    )
                except BaseException:
                    if before is not None:
                        pipeline.attach_gallery(before)
                    raise
            return {
                "individual_id": individual_id,
                "added": len(added),
                "skipped_duplicates": len(files) - len(added),
                "image_ids": added,
                "gallery_photos": len(fresh),
            }

        return await on_worker(add)  # type: ignore[no-any-return]

    return app


def _license_of(pipeline: Pipeline) -> str | None:
    """The model's licence, when known: the bundled weights ship under the package's."""
    if pipeline.identifier.config.license is not None:
        return pipeline.identifier.config.license
    if pipeline.identifier.config.name.startswith("embedded"):
        return "Apache-2.0 (ecomarine's bundled weights)"
    return None  # see the model's own card


def _gate_fingerprint(pipeline: Pipeline) -> str | None:
    """A hash of the gate's config and tensors (which gate answered)."""
    gate = pipeline.gate
    if gate is None:
        return None
    digest = hashlib.sha256(json.dumps(gate.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(gate.backend.tensors().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
