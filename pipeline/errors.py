"""Errors a user can act on. The CLI turns them into a message and an exit code, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad usage or input (exit code 2): the message says what failed and what to do."""

    exit_code = 2


class JobFailedError(Exception):
    """The job itself failed after starting (exit code 1)."""

    exit_code = 1


class Interrupted(JobFailedError):
    """The user stopped the job (Ctrl-C, SIGINT; exit code 130): the message says what is safe and what is left."""

    exit_code = 130
