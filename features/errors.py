"""User-facing errors: the CLI prints them as one line and exits 2, never as a traceback."""


class UserError(Exception):
    """Bad input the user can fix; the message names the fix."""
