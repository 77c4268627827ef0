"""User-facing errors: the CLI prints them as one line and exits 2, never as a traceback."""


class UserError(Exception):
    """Bad input the user can fix; the message names the fix."""


def check_format_version(found, supported: int, path: str, what: str = "") -> None:
    """Refuse a file written in a newer format than this version reads (`what`: e.g. "head ")."""
    if int(found) > supported:
        raise UserError(f"{path} was written by a newer bottleneck ({what}format {found}); "
                        "upgrade to read it")
