class UserError(Exception):
    """A mistake in what the user asked for: reported as one line and a non-zero exit, never a traceback."""
