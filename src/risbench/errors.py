"""User-facing errors: one clear message (what is wrong, where, how to fix), no deep traceback.

The CLI catches `RisbenchError`, prints its message and exits with status 2.
"""


class RisbenchError(Exception):
    """A problem the user can fix (missing file, bad key, wrong checkpoint); its message says how."""


class MissingFileError(RisbenchError):
    """An expected dataset, weights or checkpoint file is not where the config says."""

    def __init__(self, what: str, path, hint: str = ""):
        msg = f"{what} not found: {path}"
        if hint:
            msg += f"\n  how to fix: {hint}"
        super().__init__(msg)
        self.path = path
