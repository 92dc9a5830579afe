"""Errors that the CLI reports as one line naming the flag or file, with a non-zero exit."""


class UsageError(Exception):
    """Bad input from the user: a flag value, a missing or unreadable file. The message names it."""
