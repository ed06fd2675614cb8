"""Errors the CLI turns into one line and exit code 2 (usage or input error)."""


class AuditError(Exception):
    """Bad usage or bad input: the message names what is wrong and how to fix it."""
