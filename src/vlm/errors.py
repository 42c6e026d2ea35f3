"""Errors that ``vlm`` turns into one line plus a hint, and a non-zero exit."""

from __future__ import annotations


class VlmError(Exception):
    """A known failure: what went wrong, how to fix it, and the exit code."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


class ConfigError(VlmError):
    """A config that LLaMA-Factory would reject, with every problem listed."""

    def __init__(self, problems: list[str], hint: str | None = None):
        self.problems = problems
        text = "invalid config:\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(text, hint)
