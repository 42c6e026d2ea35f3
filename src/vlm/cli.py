"""The ``vlm`` console script: builds the Typer app and turns known errors into one line.

Every command lives in ``vlm.commands.<stage>`` (one module per pipeline stage) and calls one library function.
Nothing heavy (torch, transformers, datasets, llamafactory) is imported here, so
``vlm --help`` stays fast.
"""

from __future__ import annotations

import os
import sys

import typer

from vlm.commands import data, evaluation, inference, selection, sweep, training
from vlm.commands.common import register

app = typer.Typer(
    name="vlm",
    help=(
        "Fine-tune a vision-language model for document extraction with LLaMA-Factory, "
        "and measure whether the fine-tune helped.\n\n"
        "The reference workflow (CORD receipts, Qwen2-VL-2B, LoRA):\n\n"
        "  vlm save-cord-dataset-in-sharegpt-format data/cord\n\n"
        "  vlm register-dataset data/cord/cord_train.json --name cord_train\n\n"
        "  vlm render-config configs/cord.yaml\n\n"
        "  vlm train configs/cord.yaml\n\n"
        "  vlm predict --group vanilla-model --config configs/cord.yaml --no-adapter\n\n"
        "  vlm predict --group finetuned-model --config configs/cord.yaml\n\n"
        "  vlm evaluate --groups vanilla-model finetuned-model\n\n"
        "Set VLM_DEBUG=1 to see tracebacks."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for stage in (data, training, inference, evaluation, selection, sweep):
    register(app, stage)


# Options that take several values after one flag: `--groups a b` means `--groups a --groups b`.
MULTI_VALUE_OPTIONS = ("--groups", "--predictions")


def expand_multi_value_options(argv: list[str]) -> list[str]:
    """Rewrite ``--groups a b`` as ``--groups a --groups b`` (click options take one value each)."""
    result, current = [], None
    for arg in argv:
        if arg in MULTI_VALUE_OPTIONS:
            current = arg
            result.append(arg)
            continue
        if arg.startswith("-"):
            current = None
        elif current and result[-1] != current:
            result.append(current)
        result.append(arg)
    return result


def describe_os_error(e: OSError) -> str:
    """'cannot write /x/y: Read-only file system': the path(s) and the reason, without Python's class names."""
    reason = e.strerror or str(e)
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    if not paths:
        return f"{reason} ({type(e).__name__})"
    return f"{' -> '.join(paths)}: {reason}"


def main() -> None:
    """Entry point: run the app; known errors become one line plus a hint and a non-zero exit."""
    from vlm.errors import VlmError

    try:
        app(args=expand_multi_value_options(sys.argv[1:]), prog_name="vlm")
    except VlmError as e:
        if os.environ.get("VLM_DEBUG"):
            raise
        from vlm.output import err

        err.print(f"[bold red]error:[/bold red] {e.message}", highlight=False)
        if e.hint:
            err.print(f"[dim]hint:[/dim] {e.hint}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as e:  # a file-system problem (no space, read-only, a folder where a file goes...)
        if os.environ.get("VLM_DEBUG"):
            raise
        from vlm.output import err

        err.print(f"[bold red]error:[/bold red] {describe_os_error(e)}", highlight=False)
        err.print("[dim]hint:[/dim] check the path: it must be writable (or readable) and of the right kind; "
                  "rerun with VLM_DEBUG=1 for the traceback.", highlight=False)
        sys.exit(2)
    except Exception as e:  # an unexpected failure: one line unless debugging
        if os.environ.get("VLM_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        print("hint: this is a bug or an unhandled case; rerun with VLM_DEBUG=1 for the traceback.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
