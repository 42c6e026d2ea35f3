"""What compared groups are scored against: the same labels for the same document, in every task.

A delta between two groups measures the models only when both were scored against the same ground truth.
Groups from different exports (a relabelled document, a re-exported split) would otherwise be compared without
a word, and the delta would measure the labels. ``align`` (``vlm.evaluation.compare``) calls
``check_same_ground_truths`` once the groups hold the same documents in one order, whether they were paired by
id (store groups, files with ids) or by line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vlm.errors import VlmError

if TYPE_CHECKING:  # compare imports this module; the name is only an annotation here
    from vlm.evaluation.compare import Group


def check_same_ground_truths(groups: Sequence[Group], by_line: bool = False) -> None:
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
