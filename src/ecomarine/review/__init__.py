"""Review: a person confirms matches and the catalogue grows (extra ``serve``).

:class:`ReviewSession` holds a results file, a gallery and an append-only decisions file;
:func:`create_review_app` is the local page over it (``ecomarine review``);
:func:`~ecomarine.review.report.contact_sheet` writes a self-contained HTML contact sheet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._decisions import ACTIONS, Decision, DecisionLog, ItemState, review_key

if TYPE_CHECKING:
    from ..darwin_core import HumanReview

__all__ = ["ACTIONS", "Decision", "DecisionLog", "ItemState", "human_reviews", "review_key"]


def human_reviews(log: DecisionLog) -> dict[str, HumanReview]:
    """The decisions in force, as :func:`~ecomarine.darwin_core.to_occurrences` takes them.

    Items on which reviewers disagree are left out (they stay machine identifications).
    """
    from ..darwin_core import HumanReview  # noqa: PLC0415 - darwin_core is the consumer

    out = {}
    for item, state in log.states().items():
        d = state.decision
        if d is None or state.conflict:
            continue
        out[item] = HumanReview(d.action, d.individual_id, d.reviewer, d.at)
    return out
