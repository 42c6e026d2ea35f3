"""How vlm starts ``llamafactory-cli``: where it is, the argv, the launcher's variables, the merge config.

Commands are argv lists and never pass through a shell. The environment is a copy of
``os.environ`` plus the variables vlm sets for LLaMA-Factory's launcher (``FORCE_TORCHRUN``,
``NNODES``..., ``USE_RAY``); those are listed by ``--dry-run`` and recorded in the run
manifest. Running the child (own process group, output to a log file, Ctrl-C/SIGTERM forwarded to
the whole group, then SIGKILL after a grace period) is ``vlm.procs.run_child``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.errors import VlmError
from vlm.lf.progress import LiveProgress
from vlm.output import err
from vlm.procs import log_tail, run_child

MERGE_CONFIG = "vlm_merge_config.yaml"


def find_llamafactory_cli() -> str:
    """``$VLM_LLAMAFACTORY_CLI`` if set (LLaMA-Factory in another environment), else ``llamafactory-cli``
    next to this Python (the venv), else the one on PATH."""
    if os.environ.get("VLM_LLAMAFACTORY_CLI"):
        return os.environ["VLM_LLAMAFACTORY_CLI"]
    beside = Path(sys.executable).parent / "llamafactory-cli"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("llamafactory-cli")
    if found:
        return found
    raise VlmError("llamafactory-cli not found",
                   hint="install the project environment: make setup (or pip install llamafactory==0.9.5).")


# LLaMA-Factory's launcher reads these to start torchrun (llamafactory/launcher.py).
DEFAULT_MASTER_PORT = 29500  # torchrun's own default
SCALE_ENV = {"nnodes": "NNODES", "node_rank": "NODE_RANK", "master_addr": "MASTER_ADDR",
             "master_port": "MASTER_PORT", "nproc_per_node": "NPROC_PER_NODE"}


@dataclass
class ScaleOut:
    """Multi-GPU and multi-node options of ``vlm train``; every field maps to one launcher variable."""

    nproc_per_node: int | None = None
    nnodes: int | None = None
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    ray: bool = False

    @property
    def torchrun(self) -> bool:
        return any(getattr(self, name) is not None for name in SCALE_ENV)

    def check(self) -> None:
        """Reject combinations that cannot start; all problems in one error."""
        problems = []
        if self.ray and self.torchrun:
            problems.append("--ray cannot be combined with --nnodes/--node-rank/--master-addr/--master-port/"
                            "--nproc-per-node (Ray places the workers itself; set ray_num_workers=N instead)")
        nnodes = self.nnodes or 1
        if self.node_rank is not None and not 0 <= self.node_rank < nnodes:
            problems.append(f"--node-rank {self.node_rank} must be between 0 and {nnodes - 1} (--nnodes {nnodes})")
        if nnodes > 1 and not self.master_addr:
            problems.append(f"--nnodes {nnodes} needs --master-addr (the address of node 0, reachable from every node)")
        for name in ("nproc_per_node", "nnodes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            problems.append(f"--master-port {self.master_port} is not a port number")
        if problems:
            raise VlmError("; ".join(problems), hint="e.g. vlm train CONFIG --nnodes 2 --node-rank 0 "
                           "--master-addr 10.0.0.1 --nproc-per-node 8 (then --node-rank 1 on the second node)")

    def flags(self) -> list[str]:
        """The command-line options that give these settings (for a command to rerun)."""
        argv = [x for name in SCALE_ENV if (v := getattr(self, name)) is not None
                for x in (f"--{name.replace('_', '-')}", str(v))]
        return argv + (["--ray"] if self.ray else [])

    def env(self, deepspeed: bool = False) -> dict[str, str]:
        """The variables vlm sets for LLaMA-Factory's launcher (DeepSpeed always needs torchrun)."""
        env = {}
        if self.torchrun or deepspeed:
            env["FORCE_TORCHRUN"] = "1"
        for name, var in SCALE_ENV.items():
            value = getattr(self, name)
            if value is not None:
                env[var] = str(value)
        if (self.nnodes or 1) > 1 and self.master_port is None:
            # Every node must agree on the port; LLaMA-Factory would pick a random free one per node.
            env["MASTER_PORT"] = str(DEFAULT_MASTER_PORT)
        if self.ray:
            env["USE_RAY"] = "1"
        return env


@dataclass
class LaunchPlan:
    """Everything needed to start one llamafactory-cli run, and to print it first."""

    argv: list[str]
    env_set: dict[str, str]
    config_path: Path
    log_path: Path
    cwd: str = field(default_factory=os.getcwd)

    def command(self) -> str:
        """The command as a shell would need it typed (for display only; nothing is run through a shell)."""
        return shlex.join(self.argv)

    def env(self) -> dict[str, str]:
        """The child's full environment: ours plus the variables vlm sets."""
        return {**os.environ, **self.env_set}

    def as_dict(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "env": dict(self.env_set)}

    def describe(self) -> str:
        """``--dry-run`` text: the variables vlm sets, then the command."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env_set.items())
        return f"{prefix} {self.command()}" if prefix else self.command()


def make_plan(cli: str, subcommand: str, config_path: Path, log_path: Path, env_set: dict[str, str]) -> LaunchPlan:
    """``[llamafactory-cli, subcommand, config]`` with an explicit environment."""
    if env_set.get("FORCE_TORCHRUN") and any(c.isspace() for c in str(config_path)):
        # LLaMA-Factory joins torchrun's arguments with spaces and splits them again.
        raise VlmError(f"the config path {config_path} contains whitespace, which LLaMA-Factory's torchrun launch "
                       "cannot pass on", hint="use an output_dir without spaces.")
    return LaunchPlan([cli, subcommand, str(config_path)], dict(env_set), config_path, log_path)


def merge_config(cfg: dict[str, Any], adapter: Path, export_dir: Path, export_size: int = 5) -> dict[str, Any]:
    """The ``llamafactory-cli export`` config that merges a LoRA adapter into its base model."""
    merged = {
        "model_name_or_path": cfg["model_name_or_path"],
        "adapter_name_or_path": str(adapter),
        "template": cfg["template"],
        "finetuning_type": "lora",
        "export_dir": str(export_dir),
        "export_size": export_size,  # GB per safetensors shard
        "export_device": "cpu",
        "export_legacy_format": False,
    }
    if cfg.get("trust_remote_code") is not None:
        merged["trust_remote_code"] = cfg["trust_remote_code"]
    return merged


def log_banner(plan: LaunchPlan, started_at: str) -> None:
    """Mark where this run starts in a log that earlier runs (or a resumed run) appended to."""
    plan.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(plan.log_path, "a", encoding="utf-8") as f:
        f.write(f"\n===== vlm {started_at}: {plan.describe()}\n")


def run_plan(plan: LaunchPlan, trainer_log: Path | None = None, title: str = "training") -> int:
    """Run the plan with its output in ``plan.log_path``; show live progress from ``trainer_log`` if given.

    Returns the child's exit code. Ctrl-C or SIGTERM stops the child's whole process
    group and raises KeyboardInterrupt once it is gone.
    """
    if trainer_log is None:
        return run_child(plan.argv, plan.log_path, env=plan.env(), cwd=plan.cwd)

    with LiveProgress(trainer_log, title=title) as live:
        return run_child(plan.argv, plan.log_path, env=plan.env(), cwd=plan.cwd, poll=live.poll, poll_every_s=0.5)


def report_failure(plan: LaunchPlan, code: int, lines: int = 20) -> None:
    """Print the end of the log and where the whole log is."""
    tail = log_tail(plan.log_path, lines)
    err.print(f"[bold red]{Path(plan.argv[0]).name} {plan.argv[1]} exited with code {code}[/bold red]; "
              f"last {lines} lines of {plan.log_path}:", highlight=False)
    if tail:
        err.print(tail, markup=False, highlight=False)
    err.print(f"full log: {plan.log_path}", highlight=False)


def resolve_paths(cfg: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """Absolute dataset_dir, output_dir, media_dir and deepspeed; model paths too when they exist locally."""
    base = base or Path.cwd()
    cfg = dict(cfg)
    cfg.setdefault("dataset_dir", "data")  # LLaMA-Factory's default
    for key in ("dataset_dir", "output_dir", "media_dir"):
        if isinstance(cfg.get(key), str):
            cfg[key] = str((base / cfg[key]).resolve())
    for key in ("deepspeed", "model_name_or_path", "adapter_name_or_path"):
        value = cfg.get(key)
        if isinstance(value, str) and "," not in value and (base / value).exists():
            cfg[key] = str((base / value).resolve())
    return cfg
