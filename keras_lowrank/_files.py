"""Writing a folder of results so that a user's files are never mixed or lost.

``staged_folder(path)`` yields a new temporary folder beside ``path``; when the
block succeeds it takes ``path``'s place in one rename, and when it fails or is
interrupted (Ctrl-C) it is removed and ``path`` is as it was. An existing,
non-empty ``path`` is refused unless ``overwrite=True``, and then replaced
whole (no stale files of the earlier run stay beside the new ones) — but only
if it holds nothing but what an earlier run wrote: each folder written here
carries a manifest (``MANIFEST``) of its files, and a folder holding anything
else (a user's ``train.py``, data, a folder written by hand or by an older
version) is refused even with ``overwrite=True``. A symbolic link is never
followed or replaced. Written by hand: neither Keras nor the standard library
stages a folder (``tempfile`` gives the name, ``os.replace`` the atomic rename
of files only).
"""

import contextlib
import json
import os
import shutil
import tempfile

MANIFEST = ".keras-lowrank-manifest.json"


def _entries(folder):
    """Every file, folder and link below ``folder`` (links not followed), as
    paths relative to it, the manifest itself left out."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            relative = os.path.relpath(os.path.join(root, name), folder)
            if relative != MANIFEST:
                found.append(relative.replace(os.sep, "/"))
    return sorted(found)


def _foreign_entries(folder):
    """What ``folder`` holds that its manifest does not list (everything, where
    it has no manifest or an unreadable one)."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as handle:
            listed = set(json.load(handle)["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        listed = set()
    return [e for e in _entries(folder) if e not in listed or os.path.islink(os.path.join(folder, e))]


def check_output_folder(path, overwrite=False, argument="output"):
    """Raises before any work if ``path`` cannot be written as asked."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"`{argument}` must be a folder path, got {path!r}.")
    path = os.fspath(path)
    if os.path.islink(path):
        raise FileExistsError(
            f"`{argument}`: {path} is a symbolic link (to {os.readlink(path)}); a link is never "
            "followed or replaced: pass the folder it points to, or a new folder.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"`{argument}`: {path} exists and is not a folder.")
    # The folder is staged beside `path` and renamed into place: its parent (the nearest
    # one that exists; the rest is created) must be a folder we may write — checked now,
    # before any work, not after it.
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"`{argument}`: {path} cannot be created: {parent} is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"`{argument}`: {path} cannot be written: no write permission in {parent}.")
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise FileExistsError(
                f"`{argument}`: {path} exists and is not empty; choose a new folder or pass "
                "overwrite=True (--overwrite) to replace a folder an earlier run wrote.")
        foreign = _foreign_entries(path)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise FileExistsError(
                f"`{argument}`: {path} holds files keras_lowrank did not write ({shown}); "
                "overwrite=True (--overwrite) replaces only a folder an earlier export or run "
                "wrote. Choose a new folder, or move those files away yourself.")
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
        with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as handle:
            json.dump({"written_by": "keras_lowrank", "entries": _entries(staging)}, handle, indent=1)
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
