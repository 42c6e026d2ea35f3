"""What compared groups are scored against: the same labels for the same document, of the kind the task scores.

A delta between two groups measures the models only when both were scored against the same ground truth.
Groups from different exports (a relabelled document, a re-exported split) would otherwise be compared without
a word, and the delta would measure the labels. ``align`` (``vlm.evaluation.compare``) calls
``check_same_ground_truths`` once the groups hold the same documents in one order, whether they were paired by
id (store groups, files with ids) or by line. ``refuse_short_answers`` keeps a QA export's groups (accepted
answers, not JSON objects) out of the extraction metrics, which would score them without complaint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from vlm.data.records import as_answers
from vlm.errors import VlmError


class Labelled(Protocol):
    """What these checks read of a group (``compare.Group``, which imports this module, has it)."""

    name: str
    ids: list[str]
    gts: list[Any]


def check_same_ground_truths(groups: Sequence[Labelled], by_line: bool = False) -> None:
    """Refuse aligned groups whose ground truths differ for a document, naming the first one.

    Every group is compared with the first by plain equality of the parsed values: C-speed on dicts and lists,
    a few milliseconds for 10,000 documents x 2 groups, where serialising each ground truth would cost more than
    the scoring it guards. ``by_line``: the groups were paired by position (a file without ids), so a difference
    most likely means the files list the documents in different orders.
    """
    base = groups[0]
    for g in groups[1:]:
        differ = [k for k, (a, b) in enumerate(zip(base.gts, g.gts)) if a is not b and a != b]
        if not differ:
            continue
        k = differ[0]
        where = f"document {k + 1} (paired by line)" if by_line else f"document {base.ids[k]!r}"
        hint = ("give every file the same documents in the same order, or add ids." if by_line else
                "the groups were predicted on different labels (another export of the split?): predict every "
                "group on the same exported dataset, or compare only groups whose ground truths agree.")
        raise VlmError(f"groups {base.name} and {g.name} have different ground truths for {where}; "
                       f"{len(differ):,} of {len(base.gts):,} documents differ, so a delta would measure the labels, "
                       "not the models", hint=hint)


def _short_answers(gt: Any) -> bool:
    """True for a ground truth that --task qa reads as accepted answers: a string, or a list of short answers."""
    if isinstance(gt, dict):
        return False
    try:
        as_answers(gt)
    except ValueError:
        return False
    return True


def refuse_short_answers(groups: Sequence[Labelled]) -> None:
    """Refuse extraction scoring of a group whose every ground truth is a QA export's accepted answers.

    The CORD metrics take a list of strings for a document without complaint (a model that wrote no JSON once
    scored menu rows F1 1.000 on one), so the task is told from the ground truths. ``all`` stops at the first
    JSON object: one check per extraction group.
    """
    for g in groups:
        if g.gts and all(_short_answers(gt) for gt in g.gts):
            shown = json.dumps(g.gts[0], ensure_ascii=False, default=str)
            raise VlmError(f"group {g.name}: the ground truths are short answers (document {g.ids[0]!r}: "
                           f"{shown[:60]}{'...' if len(shown) > 60 else ''}), a QA export, not JSON objects, so "
                           "the extraction metrics do not apply",
                           hint="score a short-answer QA set with vlm evaluate --task qa (ANLS and exact match).")
