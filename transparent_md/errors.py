"""Errors a user can meet: each message says what is wrong and what to do."""


class UserError(Exception):
    """A failure the operator can fix; the CLI prints it without a traceback."""
