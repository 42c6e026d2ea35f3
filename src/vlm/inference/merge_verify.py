"""``vlm merge --verify N``: merge a LoRA adapter, then prove the merged model predicts what its adapter did.

The merge itself is ``vlm.training.merge`` (``llamafactory-cli export``). Verifying it needs the prediction
engine, which lives in this stage, so the step that does both is here and ``vlm merge`` calls it.

The first N documents of the run's validation split are predicted twice on the transformers backend, greedy,
with LLaMA-Factory's prompts and image resizing: once by the base model with the adapter (as ``vlm predict``
loads it) and once by the merged model. ``vlm.inference.parity`` compares the answers byte for byte and, where
they differ, scores the first differing token on both models, so a near-tie (rounding) is told from drift
(a merge that computes something else, as in LLaMA-Factory issues #8241 and #9664).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vlm.data.records import load_documents
from vlm.errors import VlmError
from vlm.inference.parity import NEAR_TIE, ParityReport, Side, compare
from vlm.inference.predict import PredictSpec, resolve_settings
from vlm.lf.cli import LaunchPlan
from vlm.output import info
from vlm.training.merge import MergeSpec, merge

VERIFY_SPLIT = "validation"


@dataclass
class VerifySpec:
    """How ``vlm merge`` checks its result; ``documents=0`` skips the check."""

    documents: int = 8
    near_tie: float = NEAR_TIE
    max_new_tokens: int = 1024
    batch_size: int = 8
    only: bool = False  # check the model already in the export dir; merge nothing


def merge_and_verify(spec: MergeSpec, verify: VerifySpec
                     ) -> tuple[LaunchPlan, dict[str, Any], int | None, ParityReport | None]:
    """Merge (unless ``verify.only``), then compare the merged model with its adapter on ``verify.documents``
    validation documents. Returns the merge's plan, config and exit code, and the report (None when not checked)."""
    if verify.only:
        if not verify.documents:
            raise VlmError("--verify-only with --no-verify (or --verify 0) checks nothing",
                           hint="pass --verify N, N >= 1.")
        plan, merged, _ = merge(replace(spec, dry_run=True))  # the same adapter and export dir, nothing run
        if not (Path(merged["export_dir"]) / "config.json").is_file():
            raise VlmError(f"no merged model (config.json) in {merged['export_dir']}",
                           hint="merge first (drop --verify-only), or pass --export-dir of the merged model.")
        code = 0
    else:
        plan, merged, code = merge(spec)
    if spec.dry_run or code or not verify.documents:
        return plan, merged, code, None
    return plan, merged, code, verify_merge(spec.config, merged, verify)


def verify_merge(config: Path, merged: dict[str, Any], verify: VerifySpec) -> ParityReport:
    """The adapter (over its base model) against the merged model in ``merged['export_dir']``."""
    adapter, export_dir = str(merged["adapter_name_or_path"]), str(merged["export_dir"])
    try:
        with_adapter = resolve_settings(PredictSpec(group="verify", config=config, adapter=adapter,
                                                    split=VERIFY_SPLIT))
        merged_model = resolve_settings(PredictSpec(group="verify", config=config, model=export_dir,
                                                    no_adapter=True, split=VERIFY_SPLIT))
        records = load_documents(with_adapter["dataset_dir"], with_adapter["dataset"])[: verify.documents]
    except VlmError as e:
        raise VlmError(f"the merged model is in {export_dir} but cannot be verified: {e.message}",
                       hint=f"{e.hint + '; or ' if e.hint else ''}pass --no-verify to skip the check.") from None
    info(f"verifying the merge on {len(records)} {with_adapter['dataset']} documents: adapter vs merged model")
    return compare(Side("adapter", "transformers", with_adapter), Side("merged", "transformers", merged_model),
                   records, verify.max_new_tokens, verify.batch_size, verify.near_tie)
