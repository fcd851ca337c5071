"""User-facing errors: one clear message (what is wrong, where, how to fix), no deep traceback.

The CLI catches `RisbenchError`, prints its message and exits with status 2.
"""

import os
from pathlib import Path


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


def check_can_create(path, key: str, is_folder: bool = False) -> None:
    """Refuse, before any work is done, a ``key=path`` that cannot be made: a file stands where a folder
    must be (``path`` itself too when it ``is_folder``), or the nearest existing folder is not writable.
    Whether ``path`` may exist already is the caller's rule."""
    path = Path(path).absolute()
    nearest = next(folder for folder in ((path,) if is_folder else ()) + tuple(path.parents) if folder.exists())
    if not nearest.is_dir():
        problem = f"{nearest} is a file, not a folder"
    elif not os.access(nearest, os.W_OK):
        problem = f"no permission to write in {nearest}"
    else:
        return
    raise RisbenchError(f"{key}={path} cannot be written: {problem}.\n  how to fix: give {key} a path in a "
                        "folder you can write")
