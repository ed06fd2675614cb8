"""Errors the CLI turns into one line and exit code 2 (usage or input error)."""

from difflib import get_close_matches


class AuditError(Exception):
    """Bad usage or bad input: the message names what is wrong and how to fix it."""


def did_you_mean(name: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices` to a misspelt `name`, else ''."""
    match = get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type where it has none): what one error line shows."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
