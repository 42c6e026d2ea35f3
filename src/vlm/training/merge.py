"""``vlm merge``: fold a trained LoRA adapter into its base model with ``llamafactory-cli export``.

The export config (``vlm.lf.cli.merge_config``) is written into the export dir beside the
merged weights, with the command that reruns it; the run's output goes to ``merge.log`` there.
Merging runs on the CPU, so it works on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.fsutil import atomic_write_text, now
from vlm.lf.cli import (
    MERGE_CONFIG,
    LaunchPlan,
    find_llamafactory_cli,
    log_banner,
    make_plan,
    merge_config,
    report_failure,
    resolve_paths,
    run_plan,
)
from vlm.output import info
from vlm.training.checkpoints import resolve_checkpoint
from vlm.training.config import load_config, render_yaml


@dataclass
class MergeSpec:
    """What ``vlm merge`` was asked to do."""

    config: Path
    adapter: Path | None = None
    export_dir: Path | None = None
    export_size: int = 5
    dry_run: bool = False
    checkpoint: str | None = None  # best (vlm select's winner), final, N or checkpoint-N


def merge(spec: MergeSpec) -> tuple[LaunchPlan, dict[str, Any], int | None]:
    """Write the merge config into the export dir and run ``llamafactory-cli export`` on it."""
    cfg = resolve_paths(load_config(spec.config))
    missing = [k for k in ("model_name_or_path", "template") if not cfg.get(k)]
    if missing:
        raise VlmError(f"{spec.config} has no {', '.join(missing)}", hint="pass the training config of the run.")
    if cfg.get("finetuning_type", "lora") != "lora":
        raise VlmError(f"merge applies to LoRA runs; this config trains with {cfg['finetuning_type']}",
                       hint="a full or freeze run's output_dir already holds the whole model.")
    adapter = (spec.adapter or Path(cfg.get("output_dir") or "")).resolve()
    if spec.checkpoint:
        if spec.adapter:
            raise VlmError("--checkpoint and --adapter both name the adapter", hint="pass one of them.")
        adapter = resolve_checkpoint(cfg, spec.config, spec.checkpoint).resolve()
    if not (adapter / "adapter_config.json").is_file():
        raise VlmError(f"no LoRA adapter (adapter_config.json) in {adapter}",
                       hint="train first (vlm train CONFIG), or pass --adapter DIR (e.g. a checkpoint-N dir).")
    export_dir = (spec.export_dir or Path(f"{adapter}-merged")).resolve()
    if export_dir == adapter:
        raise VlmError("--export-dir must differ from the adapter dir", hint="e.g. --export-dir saves/merged")
    if export_dir.exists() and not export_dir.is_dir():
        raise VlmError(f"--export-dir {export_dir} is a file, not a folder",
                       hint="pass a folder for the merged model (it is created), e.g. --export-dir saves/merged.")
    merged = merge_config(cfg, adapter, export_dir, spec.export_size)
    plan = make_plan(find_llamafactory_cli(), "export", export_dir / MERGE_CONFIG, export_dir / "merge.log", {})
    if spec.dry_run:
        return plan, merged, None
    header = [f"Merge config written by vlm merge {spec.config} at {now()}.", f"Rerun: {plan.describe()}"]
    atomic_write_text(plan.config_path, render_yaml(merged, header))
    log_banner(plan, now())
    info(f"merging {adapter} into {merged['model_name_or_path']} -> {export_dir}\n  log: {plan.log_path}")
    code = run_plan(plan)
    if code:
        report_failure(plan, code)
    return plan, merged, code
