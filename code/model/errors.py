import sys


class UserError(Exception):
    """A mistake in what the user asked for: reported as one line and a non-zero exit, never a traceback."""


def report_user_errors(run, *args) -> int:
    """Run a command body; a UserError becomes one 'error: ...' line on stderr and exit status 2."""
    try:
        run(*args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
