"""The review app: a local page where a person confirms matches and the catalogue grows."""

from __future__ import annotations

import mimetypes
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response

from ..gallery import Gallery
from ..pipeline import Pipeline
from ..results import read_results
from ..serve._errors import SAFE_ID, RequestError, install_error_handlers
from ._decisions import ACTIONS, Decision, DecisionLog
from ._queue import PhotoRegistry, ReviewItem, build_queue

__all__ = ["ReviewSession", "create_review_app"]

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class ReviewSession:
    """One reviewer's session over a results file, a gallery and a decisions file.

    Decisions are written to the decisions file first (fsync), then applied to the
    gallery under its lock, reloading it each time: another process (a second reviewer,
    ``ecomarine gallery add``) may change the gallery meanwhile and nothing is lost.

    Args:
        results: The results file (JSONL or CSV from ``ecomarine identify``).
        gallery_dir: The gallery folder (read for candidates' photos; written on decisions).
        decisions: The decisions file (appended; created if missing).
        reviewer: Who is reviewing (recorded with every decision).
        gallery_images: Root of the catalogue's photo paths (default: the current folder).
        model: The model that embeds confirmed photos (must be the gallery's).
    """

    def __init__(
        self,
        results: str | Path,
        gallery_dir: str | Path,
        decisions: str | Path,
        reviewer: str,
        *,
        gallery_images: str | Path | None = None,
        model: str = "embedded",
    ) -> None:
        if not SAFE_ID.match(reviewer):
            raise RequestError(400, "bad_reviewer", "reviewer: 1-128 characters, no slashes")
        self.results = Path(results)
        self.gallery_dir = Path(gallery_dir)
        self.reviewer = reviewer
        self.log = DecisionLog(decisions)
        self.pipeline = Pipeline.from_pretrained(model, gallery=self.gallery_dir, gate=False)
        self.photos = PhotoRegistry()
        self.items: list[ReviewItem] = build_queue(
            read_results(self.results),
            self.pipeline.gallery,
            self.photos,
            results_root=self.results.resolve().parent,
            gallery_root=Path(gallery_images or Path.cwd()).resolve(),
        )
        self._by_id = {it.item_id: it for it in self.items}
        self._lock = threading.Lock()

    # --- state -----------------------------------------------------------------------------

    def queue(self) -> dict[str, Any]:
        """Everything the page needs: items, their states, where to start."""
        states = self.log.states()
        items = []
        for item in self.items:
            data = item.to_dict()
            st = states.get(item.item_id)
            data["state"] = None
            if st is not None and st.decision is not None:
                d = st.decision
                data["state"] = {
                    "action": d.action,
                    "individual_id": d.individual_id,
                    "reviewer": d.reviewer,
                    "at": d.at,
                    "conflict": st.conflict,
                    "reviewers": list(st.reviewers),
                }
            items.append(data)
        start = next((i for i, it in enumerate(items) if it["state"] is None), 0)
        return {"reviewer": self.reviewer, "items": items, "start": start}

    # --- decisions -------------------------------------------------------------------------

    def decide(self, item_id: str, action: str, individual_id: str | None) -> Decision:
        """Record a decision and apply it to the gallery.

        A reviewer changing their mind takes their earlier decision back first; a decision
        that contradicts another reviewer's is recorded as a conflict and not applied.

        Raises:
            RequestError: For an unknown item or action, or a bad or clashing id.
        """
        item = self._by_id.get(item_id)
        if item is None:
            raise RequestError(404, "unknown_item", f"no item {item_id!r} in this review")
        if action not in ACTIONS:
            raise RequestError(400, "bad_action", f"action must be one of {ACTIONS}")
        if action in ("confirm", "new_individual"):
            if individual_id is None or not SAFE_ID.match(individual_id):
                raise RequestError(400, "bad_id", "individual id: 1-128 characters, no slashes")
            if action == "confirm" and individual_id not in {
                c["individual_id"] for c in item.candidates
            }:
                raise RequestError(400, "not_a_candidate", f"{individual_id!r} was not proposed")
        else:
            individual_id = None
        with self._lock:
            mine = [
                d
                for d in self.log.in_force()
                if d.item_id == item_id and d.reviewer == self.reviewer
            ]
            for d in mine:
                self._undo(d)
            others = [d for d in self.log.in_force() if d.item_id == item_id and not d.conflict]
            conflict = any(d.outcome != (action, individual_id) for d in others)
            image_ids: list[str] = []
            if not conflict and action in ("confirm", "new_individual") and not others:
                image_ids = self._enroll(item, str(individual_id), new=action == "new_individual")
            return self.log.append(
                item_id=item_id,
                action=action,
                reviewer=self.reviewer,
                individual_id=individual_id,
                image_ids=tuple(image_ids),
                conflict=conflict,
            )

    def undo(self) -> Decision | None:
        """Take back this reviewer's latest decision in force (``None`` if there is none)."""
        with self._lock:
            last = self.log.last_undoable(self.reviewer)
            return None if last is None else self._undo(last)

    def _undo(self, decision: Decision) -> Decision:
        if decision.image_ids:
            with Gallery.update(self.gallery_dir) as gallery:
                present = {r["image_id"] for r in gallery.records()}
                gone = [i for i in decision.image_ids if i in present]
                if gone:
                    gallery.remove(image_ids=gone)
            self.pipeline.attach_gallery(gallery)
        return self.log.append(
            item_id=decision.item_id, action="undo", reviewer=self.reviewer, undoes=decision.seq
        )

    def _enroll(self, item: ReviewItem, individual_id: str, *, new: bool) -> list[str]:
        paths = [self.photos.path(p["token"]) for p in item.photos if p["token"]]
        files = [p for p in paths if p is not None]
        with Gallery.update(self.gallery_dir) as gallery:
            # Under the gallery's lock: another reviewer or process may have just created it.
            if new and individual_id in set(gallery.individuals()):
                raise RequestError(
                    409, "id_taken", f"{individual_id!r} is already catalogued: confirm it instead"
                )
            if not files:
                return []
            self.pipeline.attach_gallery(gallery)
            species = gallery.species_of(individual_id)
            return self.pipeline.enroll(
                files,
                [individual_id] * len(files),
                species,
                [{"source": str(f), "reviewed_by": self.reviewer} for f in files],
            )


def create_review_app(session: ReviewSession) -> FastAPI:
    """The review page and its small JSON API, for uvicorn on 127.0.0.1."""
    app = FastAPI(title="ecomarine review", docs_url=None, redoc_url=None, openapi_url=None)
    static = resources.files("ecomarine.review") / "static"

    def asset(name: str, media: str) -> Response:
        return Response(
            (static / name).read_bytes(),
            media_type=media,
            headers={"content-security-policy": _CSP, "cache-control": "no-store"},
        )

    install_error_handlers(app, {404: "not_found"})

    @app.get("/")
    def page() -> Response:
        return asset("review.html", "text/html; charset=utf-8")

    @app.get("/review.js")
    def script() -> Response:
        return asset("review.js", "text/javascript; charset=utf-8")

    @app.get("/review.css")
    def style() -> Response:
        return asset("review.css", "text/css; charset=utf-8")

    @app.get("/api/queue")
    def queue() -> dict[str, Any]:
        return session.queue()

    @app.post("/api/decide")
    async def decide(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise RequestError(400, "bad_json", "send a JSON object") from exc
        if not isinstance(body, dict):
            raise RequestError(400, "bad_json", "send a JSON object")
        ind = body.get("individual_id")
        decision = session.decide(
            str(body.get("item_id", "")),
            str(body.get("action", "")),
            None if ind is None else str(ind),
        )
        return decision.to_dict()

    @app.post("/api/undo")
    def undo() -> dict[str, Any]:
        decision = session.undo()
        return {
            "undone": None if decision is None else decision.undoes,
            "item_id": None if decision is None else decision.item_id,
        }

    @app.get("/api/photo/{token}")
    def photo(token: str) -> FileResponse:
        path = session.photos.path(token)
        if path is None:
            raise RequestError(404, "unknown_photo", "no such photo in this review")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not media.startswith("image/"):
            media = "application/octet-stream"
        return FileResponse(
            path,
            media_type=media,
            headers={"cache-control": "private, max-age=3600", "x-content-type-options": "nosniff"},
        )

    return app
