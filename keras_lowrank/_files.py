"""Writing a folder of results so that a user's files are never mixed or lost.

``staged_folder(path)`` yields a new temporary folder beside ``path``; when the
block succeeds it takes ``path``'s place in one rename, and when it fails or is
interrupted (Ctrl-C) it is removed and ``path`` is as it was. An existing,
non-empty ``path`` is refused unless ``overwrite=True``, and then replaced
whole (no stale files of the earlier run stay beside the new ones). Written by
hand: neither Keras nor the standard library stages a folder (``tempfile``
gives the name, ``os.replace`` the atomic rename of files only).
"""

import contextlib
import os
import shutil
import tempfile


def check_output_folder(path, overwrite=False, argument="output"):
    """Raises before any work if ``path`` cannot be written as asked."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"`{argument}` must be a folder path, got {path!r}.")
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"`{argument}`: {path} exists and is not a folder.")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(
            f"`{argument}`: {path} exists and is not empty; choose a new folder or pass "
            "overwrite=True (--overwrite) to replace it.")
    return path


@contextlib.contextmanager
def staged_folder(path, overwrite=False, argument="output"):
    """Yields a temporary folder that replaces ``path`` when the block succeeds."""
    path = os.path.abspath(check_output_folder(path, overwrite, argument))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    try:
        yield staging
        check_output_folder(path, overwrite, argument)  # nobody wrote there meanwhile
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            previous = os.path.join(old, "previous")
            os.rename(path, previous)
            try:
                os.rename(staging, path)
            except BaseException:
                os.rename(previous, path)  # put the user's folder back
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
