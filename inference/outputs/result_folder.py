"""Result folders: the marker that says what vifit wrote, and the rules for replacing a folder.

A folder written by the command line holds a marker file, ``.vifit-result`` (JSON), that lists
every file and folder vifit wrote into it, each file with its size and SHA-256::

    {"format": "vifit-result", "version": 1, "vifit": "0.3.0", "command": "fit",
     "complete": true, "written_at": "2026-01-01T12:00:00+00:00",
     "entries": {"plots": {"type": "dir"},
                 "report.html": {"type": "file", "role": "report", "size": 81234, "sha256": "..."},
                 ...}}

An entry of a folder is vifit's when the marker lists it with the same type and, for a file, the
same size and content. A folder is replaced only when every entry in it is vifit's (an empty
folder too): a file a user added, renamed or edited, a link, or a marker from a newer vifit
makes it the user's, and it is never replaced or emptied. A marker is only ever written by
vifit, so a folder cannot be taken for a result because of a file name a user could have.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

__all__ = [
    "MARKER",
    "FORMAT",
    "VERSION",
    "FolderError",
    "read_marker",
    "foreign_entries",
    "check_replaceable",
    "write_marker",
    "record",
    "is_vifits",
    "replace",
    "folder_mode",
    "describe",
]

MARKER = ".vifit-result"
FORMAT = "vifit-result"
VERSION = 1
ROLES = {"report.html": "report", "posterior.nc": "posterior", "reference.nc": "reference"}


class FolderError(Exception):
    """A folder (or file) that vifit must not write into or replace; the message is a sentence."""


def folder_mode() -> int:
    """Return the mode of a new folder under the user's umask (``0o777 & ~umask``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _kind(entry: os.DirEntry) -> str:
    if entry.is_symlink():
        return "link"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return "other"


def _walk(folder: Path, prefix: str = ""):
    """``(relative POSIX path, kind, path)`` of every entry under ``folder``, links not followed."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = prefix + entry.name
        if not prefix and entry.name == MARKER:
            continue
        kind = _kind(entry)
        yield rel, kind, Path(entry.path)
        if kind == "dir":
            yield from _walk(Path(entry.path), rel + "/")


def _role(rel: str) -> str:
    if rel.startswith("plots/") and rel.endswith(".png"):
        return "plot"
    return ROLES.get(rel, "result")


def read_marker(folder: Path) -> tuple[dict | None, str]:
    """Return the marker of ``folder`` and ``""``, or ``None`` and why vifit cannot use one there."""
    path = Path(folder) / MARKER
    if path.is_symlink() or not path.exists():
        return None, f"it has no {MARKER} marker, so vifit did not write it"
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None, f"its {MARKER} is not a marker vifit wrote"
    if not isinstance(marker, dict) or marker.get("format") != FORMAT or not isinstance(marker.get("entries"), dict):
        return None, f"its {MARKER} is not a marker vifit wrote"
    version = marker.get("version")
    if not isinstance(version, int) or version < 1:
        return None, f"its {MARKER} is not a marker vifit wrote"
    if version > VERSION:
        return None, f"its {MARKER} was written by a newer vifit (format version {version}; this one reads {VERSION})"
    return marker, ""


def is_vifits(folder: Path, rel: str, marker: dict | None, *, role: str | None = None) -> bool:
    """Whether the entry ``rel`` of ``folder`` is what vifit wrote there (and has ``role``, if given)."""
    if marker is None:
        return False
    entry = marker["entries"].get(rel)
    path = Path(folder) / rel
    if not isinstance(entry, dict) or path.is_symlink():
        return False
    if role is not None and entry.get("role") != role:
        return False
    if entry.get("type") == "dir":
        return path.is_dir()
    if entry.get("type") != "file" or not path.is_file():
        return False
    try:
        return path.stat().st_size == entry.get("size") and _sha256(path) == entry.get("sha256")
    except OSError:
        return False


def foreign_entries(folder: Path, *, limit: int = 20) -> tuple[list[str], str]:
    """Entries of ``folder`` that vifit did not write, for a message, and why there is no marker.

    Without a usable marker every entry is foreign. A listed file whose content changed since
    vifit wrote it is foreign too. A foreign folder is named (``"src/"``) without looking inside
    it, and the search stops after ``limit`` names (``"..."`` last: there may be more).
    """
    folder = Path(folder)
    marker, why = read_marker(folder)
    foreign: list[str] = []

    def visit(path: Path, prefix: str) -> bool:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if not prefix and entry.name == MARKER:
                continue
            rel, kind = prefix + entry.name, _kind(entry)
            listed = marker["entries"].get(rel) if marker is not None else None
            if isinstance(listed, dict) and listed.get("type") == kind and is_vifits(folder, rel, marker):
                if kind == "dir" and not visit(Path(entry.path), rel + "/"):
                    return False
                continue
            changed = isinstance(listed, dict) and kind == "file" and listed.get("type") == "file"
            name = repr(rel + ("/" if kind == "dir" else ""))
            foreign.append(name + (" (changed since vifit wrote it)" if changed else ""))
            if len(foreign) >= limit:
                foreign.append("...")
                return False
        return True

    visit(folder, "")
    if marker is None and not foreign and (folder / MARKER).exists():
        foreign.append(repr(MARKER))
    return foreign, why


def describe(names: list[str], limit: int = 4) -> str:
    """Join :func:`foreign_entries`' names for a message: ``'a', 'b/' and 3 more``."""
    shown = [n for n in names if n != "..."]
    text = ", ".join(shown[:limit])
    rest = len(shown) - limit
    if "..." in names:
        return text + " and more"
    return text + (f" and {rest} more" if rest > 0 else "")


def check_replaceable(out: Path, flag: str = "--out") -> None:
    """Raise :class:`FolderError` unless ``out`` is missing, empty, or wholly an earlier vifit result."""
    out = Path(out)
    if out.is_symlink():
        raise FolderError(
            f"{flag} {str(out)!r} is a symbolic link; give the folder it points to "
            f"({os.readlink(out)!r}) or a new name"
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise FolderError(f"{flag} {str(out)!r} is a file; choose a folder name")
    foreign, why = foreign_entries(out)
    if not foreign:
        return
    marker, _ = read_marker(out)
    if marker is None:
        raise FolderError(
            f"{flag} {str(out)!r} is not empty and {why}: it holds {describe(foreign)}; vifit replaces "
            "only a folder it wrote itself, so choose a new folder name"
        )
    raise FolderError(
        f"{flag} {str(out)!r} holds {describe(foreign)}, which vifit did not write; vifit replaces a "
        "result folder only when everything in it is its own, so choose a new folder name or move "
        "those files elsewhere"
    )


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("vifit")
    except metadata.PackageNotFoundError:
        return "unknown"


def _dump(folder: Path, marker: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{MARKER}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(marker, indent=2) + "\n")
        os.chmod(tmp, 0o666 & folder_mode())
        os.replace(tmp, Path(folder) / MARKER)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _entry(path: Path, rel: str, kind: str) -> dict:
    if kind == "dir":
        return {"type": "dir"}
    return {"type": "file", "role": _role(rel), "size": path.stat().st_size, "sha256": _sha256(path)}


def write_marker(folder: Path, *, command: str, complete: bool = True) -> dict:
    """List every entry of ``folder`` (all of it written by vifit) in a new marker."""
    folder = Path(folder)
    entries = {}
    for rel, kind, path in _walk(folder):
        if kind in ("file", "dir"):
            entries[rel] = _entry(path, rel, kind)
    marker = {
        "format": FORMAT,
        "version": VERSION,
        "vifit": _version(),
        "command": command,
        "complete": complete,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "entries": entries,
    }
    _dump(folder, marker)
    return marker


def record(folder: Path, written: dict[str, str], *, command: str) -> bool:
    """Add the files ``written`` (``{relative path: role}``, just written by vifit) to the marker.

    A folder without a marker gets one that lists only these. A marker vifit cannot use (a newer
    format, or a file of that name it did not write) is left alone; returns whether it was written.
    """
    folder = Path(folder)
    marker, _ = read_marker(folder)
    if marker is None:
        if (folder / MARKER).exists() or (folder / MARKER).is_symlink():
            return False
        marker = {"format": FORMAT, "version": VERSION, "vifit": _version(), "command": command, "entries": {}}
    for rel, role in written.items():
        parts = rel.split("/")
        for i in range(1, len(parts)):
            marker["entries"].setdefault("/".join(parts[:i]), {"type": "dir"})
        entry = _entry(folder / rel, rel, "file")
        entry["role"] = role
        marker["entries"][rel] = entry
    marker["written_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _dump(folder, marker)
    return True


def _refuse_late(out: Path, foreign: list[str]) -> None:
    if foreign:
        raise FolderError(
            f"--out {str(out)!r} now holds {describe(foreign)}, which vifit did not write, so it was not replaced"
        )


def replace(new: Path, out: Path) -> None:
    """Move the folder ``new`` to ``out``, replacing an earlier vifit result there safely.

    ``out`` is checked again (:func:`check_replaceable`), moved aside to a hidden sibling, checked
    once more there (a file added in between is caught), then ``new`` is moved in and the old
    folder deleted. On any failure the old folder is moved back and :class:`FolderError` or the
    ``OSError`` is raised; ``new`` is left where it was.
    """
    new, out = Path(new), Path(out)
    if out.is_dir() and not out.is_symlink():
        _refuse_late(out, foreign_entries(out)[0])
    check_replaceable(out)
    if not out.exists():
        os.rename(new, out)
        return
    aside = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    os.rename(out, aside)
    try:
        _refuse_late(out, foreign_entries(aside)[0])
        os.rename(new, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
