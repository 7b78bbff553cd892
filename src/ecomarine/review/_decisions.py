"""The decisions file: one JSON line per decision, flushed to disk before it counts.

A review session appends; nothing is ever rewritten, so a crash loses at most the
decision being written, and reopening replays the file to where the reviewer stopped.
Undo is itself a line that names the decision it takes back.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from ..errors import DataError

__all__ = ["ACTIONS", "Decision", "DecisionLog", "ItemState", "review_key"]

#: What a reviewer can decide about an item.
ACTIONS: Final = ("confirm", "new_individual", "skip", "not_cetacean")


def review_key(record: Any, index: int | None = None) -> str:
    """The id a reviewed photo or sighting goes by, in the decisions file and exports.

    A photo is named by its content hash (stable when files move), else its source; a
    sighting by its id.
    """
    sighting = getattr(record, "sighting_id", None)
    if sighting is not None:
        return f"sighting:{sighting}"
    return f"photo:{record.sha256 or record.source or index}"


@dataclass(frozen=True)
class Decision:
    """One line of the decisions file.

    Attributes:
        seq: Position in the file (1-based), the decision's id.
        item_id: The reviewed item (a photo or a sighting).
        action: One of :data:`ACTIONS`, or ``"undo"``.
        individual_id: The individual confirmed or created (``confirm``/``new_individual``).
        reviewer: Who decided.
        at: When (ISO 8601, UTC).
        undoes: For ``undo``, the ``seq`` taken back.
        image_ids: Gallery images the decision added (what an undo removes).
        conflict: Another reviewer had decided the item differently; not applied.
    """

    seq: int
    item_id: str
    action: str
    reviewer: str
    at: str
    individual_id: str | None = None
    undoes: int | None = None
    image_ids: tuple[str, ...] = field(default_factory=tuple)
    conflict: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out["image_ids"] = list(self.image_ids)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Decision:
        """Rebuild from a line of the file.

        Raises:
            DataError: For a malformed line (named by ``where``).
        """
        try:
            action = str(data["action"])
            if action not in (*ACTIONS, "undo"):
                raise ValueError(f"unknown action {action!r}")
            return cls(
                seq=int(data["seq"]),
                item_id=str(data["item_id"]),
                action=action,
                reviewer=str(data["reviewer"]),
                at=str(data["at"]),
                individual_id=None
                if data.get("individual_id") is None
                else str(data["individual_id"]),
                undoes=None if data.get("undoes") is None else int(data["undoes"]),
                image_ids=tuple(str(x) for x in data.get("image_ids") or ()),
                conflict=bool(data.get("conflict", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a decision ({exc})") from exc

    @property
    def outcome(self) -> tuple[str, str | None]:
        """What was decided, for comparing two reviewers' decisions."""
        return self.action, self.individual_id


@dataclass(frozen=True)
class ItemState:
    """Where an item stands after replaying the decisions file.

    Attributes:
        decision: The decision in force (the latest not undone), if any.
        conflict: Reviewers disagree on it (decisions in force differ).
        reviewers: Everyone whose decision on it is in force.
    """

    decision: Decision | None
    conflict: bool
    reviewers: tuple[str, ...]


class DecisionLog:
    """Append-only decisions file (JSONL, fsync per line).

    Args:
        path: The file (created when the first decision is made).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._decisions = list(self._read())

    def _read(self) -> Iterator[Decision]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{self.path}:{number}"
                if not line.endswith("\n"):
                    # A line cut by a crash mid-write: never fsynced, so never counted.
                    break
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not JSON ({exc.msg})") from exc
                if not isinstance(data, dict):
                    raise DataError(f"{where}: not a decision")
                yield Decision.from_dict(data, where)

    @property
    def decisions(self) -> list[Decision]:
        """Every decision, in order."""
        return list(self._decisions)

    def append(self, **fields: Any) -> Decision:
        """Write a decision (``seq`` and ``at`` are filled in) and return it, once on disk."""
        with self._lock:
            decision = Decision(
                seq=len(self._decisions) + 1,
                at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **fields,
            )
            line = json.dumps(decision.to_dict(), ensure_ascii=False) + "\n"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._decisions.append(decision)
            return decision

    def in_force(self) -> list[Decision]:
        """Decisions not taken back, in order (undo lines excluded)."""
        undone = {d.undoes for d in self._decisions if d.action == "undo"}
        return [d for d in self._decisions if d.action != "undo" and d.seq not in undone]

    def states(self) -> dict[str, ItemState]:
        """Each decided item's state."""
        by_item: dict[str, list[Decision]] = {}
        for d in self.in_force():
            by_item.setdefault(d.item_id, []).append(d)
        out = {}
        for item, ds in by_item.items():
            latest: dict[str, Decision] = {}
            for d in ds:
                latest[d.reviewer] = d  # each reviewer's own latest word
            outcomes = {d.outcome for d in latest.values()}
            applied = [d for d in ds if not d.conflict]
            out[item] = ItemState(
                decision=applied[-1] if applied else ds[-1],
                conflict=len(outcomes) > 1,
                reviewers=tuple(sorted(latest)),
            )
        return out

    def last_undoable(self, reviewer: str) -> Decision | None:
        """The reviewer's latest decision still in force."""
        mine = [d for d in self.in_force() if d.reviewer == reviewer]
        return mine[-1] if mine else None
