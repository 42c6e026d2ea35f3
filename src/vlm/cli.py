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
from vlm.errors import VlmError
from vlm.output import err, print_json

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


def empty_argument(argv: list[str]) -> str | None:
    """The option (or argument) given an empty value, e.g. ``--output ""`` from an unset shell variable."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return None
        if arg.startswith("--") and arg.endswith("="):
            return arg[:-1]
        if arg == "":
            previous = argv[i - 1] if i else ""
            return previous if previous.startswith("-") else f"argument {i} of {argv[0]}" if i else "the command"
    return None


def fail(message: str, hint: str | None, code: int, as_json: bool) -> None:
    """One line plus a hint on stderr; with --json also ``{"ok": false, "error", "hint"}`` on stdout; exit."""
    if as_json:
        print_json({"ok": False, "error": message, "hint": hint, "exit_code": code})
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False, markup=True)
    if hint:
        err.print(f"[dim]hint:[/dim] {hint}", highlight=False)
    sys.exit(code)


def main() -> None:
    """Entry point: run the app; known errors become one line plus a hint and a non-zero exit.

    With --json, every failure also prints one JSON object on stdout, so a script reading stdout always gets
    JSON: ``{"ok": false, "error": ..., "hint": ..., "exit_code": N}``.
    """
    argv = expand_multi_value_options(sys.argv[1:])
    as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    debug = bool(os.environ.get("VLM_DEBUG"))
    try:
        empty = empty_argument(argv)
        if empty:
            raise VlmError(f"{empty} is empty (an unset shell variable?)",
                           hint="give it a value, or leave it out to use its default.")
        # standalone_mode=False: click hands usage errors back, so --json can report them as JSON too
        code = app(args=argv, prog_name="vlm", standalone_mode=False)
    except VlmError as e:
        if debug:
            raise
        fail(e.message, e.hint, e.exit_code, as_json)
    except typer.TyperException as e:  # a usage error: what click would print, and its exit code (2)
        if not hasattr(e, "show"):
            raise
        if as_json and not isinstance(e.__cause__, KeyboardInterrupt):
            print_json({"ok": False, "error": e.format_message(), "hint": "see vlm COMMAND --help",
                        "exit_code": e.exit_code})
        from typer import rich_utils

        rich_utils.rich_format_error(e)  # the panel Typer prints in its standalone mode
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C: the shell's convention
        sys.exit(130)
    except OSError as e:  # a file-system problem (no space, read-only, a folder where a file goes...)
        if debug:
            raise
        fail(describe_os_error(e), "check the path: it must be writable (or readable) and of the right kind; "
             "rerun with VLM_DEBUG=1 for the traceback.", 2, as_json)
    except Exception as e:  # an unexpected failure: one line unless debugging
        if debug:
            raise
        fail(f"{type(e).__name__}: {e}", "this is a bug or an unhandled case; rerun with VLM_DEBUG=1 for the "
             "traceback.", 1, as_json)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
