"""Who owns a run directory, and what in it headwise may remove.

* A manifest (``.headwise-run.json``) lists the entries headwise writes into the
  directory. ``--overwrite`` removes only those, never a file headwise did not write,
  and refuses folders without a manifest, the working folder, its parents and the
  home folder. In the checkpoints folder it removes only checkpoints: a copy the user
  kept there (``checkpoints/step-old``) or a note stays.
* The old run is first moved aside inside the folder (renames are atomic) and deleted
  only once the new run has started; a failed start puts it back. A failed fresh
  start removes what it created, so the corrected command is not refused.
* One writer at a time: an exclusive ``flock`` on ``.lock``, which the kernel drops
  when its process dies, so a lock left by a killed run is never mistaken for a live
  one.
* Other writers into a folder (``headwise inspect --out``, which may be a run
  directory) record what they write with :func:`claim_entries` and check
  :func:`owned_entries` before replacing a file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..checks import naming_errors
from .checkpoint import is_checkpoint_entry

__all__ = ["RunDir", "RunDirError", "RunLockedError", "MANIFEST", "RUN_ENTRIES", "register_run_entry",
           "owned_entries", "claim_entries", "unclaim_entries", "replace_file"]

MANIFEST = ".headwise-run.json"
LOCK = ".lock"
_ASIDE = ".headwise-replaced"
# every top-level entry a run of headwise writes (other layers add theirs with register_run_entry)
RUN_ENTRIES = ["run.json", "run.json.tmp", "config.json", "tokenizer.json", "corpus.json", "corpus.json.tmp",
               "metrics.jsonl", "metrics.tmp", "loss.png", "precision.json", "precision.json.tmp", "checkpoints"]

try:  # POSIX; elsewhere the lock is advisory only through the pid it records
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


class RunDirError(FileExistsError):
    """The run directory cannot be used as asked (the message says why and what to do)."""


class RunLockedError(RunDirError):
    """Another live process is writing the run directory."""


def register_run_entry(name: str) -> None:
    """Declare that runs write the top-level entry ``name`` (so ``--overwrite`` may remove it)."""
    if name not in RUN_ENTRIES:
        RUN_ENTRIES.append(name)


def _read_manifest(folder: Path) -> dict | None:
    """The manifest of ``folder`` as written (a dict whose ``entries`` is a list of
    names), or None when there is none or it is not one headwise wrote."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return None
    return data


def replace_file(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` atomically: into ``<name>.tmp`` beside it, flushed to
    disk, then renamed over it. A process killed meanwhile (or a power loss) leaves the
    old file whole, never a truncated one; one that cannot be written is named."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with naming_errors(path), open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_manifest_file(folder: Path, data: dict) -> None:
    """Replace the manifest of ``folder`` with ``data`` atomically."""
    replace_file(folder / MANIFEST, json.dumps(data, indent=1) + "\n")


def owned_entries(folder: str | os.PathLike) -> set[str] | None:
    """The entries the manifest of ``folder`` lists as headwise's, or None when it has no
    readable manifest (then nothing in it is headwise's). For other writers than runs,
    e.g. ``headwise inspect --out``, which may also write into a run directory."""
    data = _read_manifest(Path(folder))
    return None if data is None else set(data["entries"])


def _rewrite_claims(folder: Path, add: set[str], drop: set[str]) -> None:
    path = folder / MANIFEST
    data = _read_manifest(folder)
    if data is None and (path.exists() or path.is_symlink()):
        raise RunDirError(f"{path} is not a headwise manifest (damaged, or written by something else); "
                          f"it is left as it is: choose another --out")
    if data is None:
        data = {"written_by": "headwise", "entries": []}
    entries = (set(data["entries"]) | add | {MANIFEST}) - (drop - {MANIFEST, LOCK})
    _write_manifest_file(folder, {**data, "entries": sorted(entries)})


def claim_entries(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add ``names`` to the manifest of the existing folder ``folder`` (creating one, and
    keeping what it lists): headwise is about to write them, so a later ``--overwrite``
    may replace them. Raises RunDirError if ``folder`` holds a manifest headwise cannot read."""
    _rewrite_claims(Path(folder), set(names), set())


def unclaim_entries(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Remove ``names`` from the manifest of ``folder`` (for entries headwise removed and
    did not write again: a file of that name put there later is not headwise's)."""
    names = set(names)
    if names and owned_entries(folder) is not None:
        _rewrite_claims(Path(folder), set(), names)


def _protected(path: Path) -> str | None:
    """Why ``path`` may never be emptied by ``--overwrite``, or None."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "it is the working folder or one of its parents"
    if resolved == Path.home().resolve():
        return "it is the home folder"
    if resolved == Path(resolved.anchor):
        return "it is the root of the file system"
    return None


class RunDir:
    """An open run directory held by this process (see the module docstring).

    Use :meth:`open`; call :meth:`started` once the new run is set up (it deletes a
    replaced run) or :meth:`abort` if setting up failed, and :meth:`release` at the end.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._lock_created = False
        self._created_dir = False
        self._fresh = False  # a new run is being set up here (abort removes what it wrote)
        self._preexisting: set[str] = set()  # entries there before this start (abort leaves them)
        self._aside: Path | None = None
        self._moved: list[str] = []
        self._new = False  # this process started a new run here (discard may remove it)

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, out: Path, *, resume: bool, overwrite: bool) -> RunDir:
        out = Path(out)
        if resume and overwrite:
            raise ValueError("choose one of --resume and --overwrite, not both")
        if out.exists() and not out.is_dir():
            raise RunDirError(f"--out {out} is an existing file, not a folder; choose another --out")
        if out.is_symlink() and not out.exists():  # (mkdir would say only "File exists")
            raise RunDirError(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist; "
                              f"create that folder or choose another --out")
        rd = cls(out)
        if rd._foreign_lock():
            raise RunDirError(f"{out} holds a {LOCK} file that headwise did not write; it is left as it is: "
                              f"choose another --out")
        if resume:
            if not (out / "run.json").is_file():
                raise FileNotFoundError(f"--resume: {out} holds no headwise run (no run.json)")
            rd._lock()
            return rd
        if not out.exists():
            out.mkdir(parents=True)
            rd._created_dir = True
        rd._lock()
        try:
            if rd._entries():
                if not overwrite:
                    raise RunDirError(
                        f"run directory {out} already exists and is not empty; pass --resume to continue "
                        f"it or --overwrite to replace it"
                    )
                rd._move_old_run_aside(rd._foreign_entries())
            rd._fresh = True
            rd._new = True
            rd._preexisting = set(rd._entries())
            rd._write_manifest()
        except BaseException:
            rd.abort()
            raise
        return rd

    def _foreign_lock(self) -> bool:
        """Whether the folder holds a ``.lock`` that is not headwise's: ours are in a
        folder with a manifest, or hold ``pid N`` (a start killed before the manifest)."""
        path = self.path / LOCK
        if not path.exists() or self._manifest() is not None:
            return False
        try:
            return re.fullmatch(r"pid \d+\n?", path.read_text(errors="replace")) is None
        except OSError:
            return True

    def _entries(self) -> list[str]:
        """What the folder holds, less this process's lock."""
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK)

    def _manifest(self) -> dict | None:
        return _read_manifest(self.path)

    def _foreign_entries(self) -> list[str]:
        manifest = self._manifest()
        own = set(manifest["entries"]) if manifest else set()
        return [e for e in self._entries() if e not in own and e != MANIFEST]

    def _move_old_run_aside(self, foreign: list[str]) -> None:
        why = _protected(self.path)
        if why is not None:
            raise RunDirError(f"--overwrite refused: {self.path} is not a run directory to empty ({why}); "
                              f"choose another --out")
        manifest = self._manifest()
        if manifest is None:
            raise RunDirError(
                f"--overwrite refused: {self.path} is not a headwise run directory (no {MANIFEST} listing "
                f"what headwise wrote there); choose another --out"
            )
        if foreign:
            print(f"--overwrite: keeping {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} headwise did not "
                  f"write in {self.path}: {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}")
        self._aside = self.path / f"{_ASIDE}-{os.getpid()}"
        self._aside.mkdir()
        for name in manifest["entries"]:
            if name == LOCK or not (self.path / name).exists():
                continue
            if name == "checkpoints" and self._move_checkpoints_aside():
                continue
            os.replace(self.path / name, self._aside / name)
            self._moved.append(name)
        # leftovers of an earlier overwrite that was killed before it finished
        for p in self.path.iterdir():
            if p.name.startswith(_ASIDE) and p != self._aside:
                os.replace(p, self._aside / p.name)
                self._moved.append(p.name)

    def _move_checkpoints_aside(self) -> bool:
        """Move the old run's checkpoints aside, leaving in the checkpoints folder what saves
        do not write (a copy the user kept, a note); False, moving nothing, when it holds
        nothing else (the folder then goes whole)."""
        folder = self.path / "checkpoints"
        if folder.is_symlink() or not folder.is_dir():
            return False
        entries = sorted(p.name for p in folder.iterdir())
        kept = [e for e in entries if not is_checkpoint_entry(e)]
        if not kept:
            return False
        print(f"--overwrite: keeping {len(kept)} entr{'y' if len(kept) == 1 else 'ies'} headwise did not write in "
              f"{folder}: {', '.join(kept[:5])}{' ...' if len(kept) > 5 else ''}")
        (self._aside / "checkpoints").mkdir()
        for e in entries:
            if e not in kept:
                os.replace(folder / e, self._aside / "checkpoints" / e)
                self._moved.append(f"checkpoints/{e}")
        return True

    def _write_manifest(self) -> None:
        entries = sorted({*RUN_ENTRIES, LOCK, MANIFEST})
        if self._aside is not None:
            entries.append(self._aside.name)  # claimed, so a killed overwrite is cleaned up later
        _write_manifest_file(self.path, {"written_by": "headwise", "entries": entries})

    # ---------------------------------------------------------------- locking
    def _lock(self) -> None:
        path = self.path / LOCK
        for _ in range(5):
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise RunLockedError(
                        f"{self.path} is being written by another headwise process ({holder}); "
                        f"wait for it to finish or choose another --out"
                    ) from None
                # the file may have been removed by a failed start between our open and flock
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}\n".encode())
            self._lock_fd = fd
            self._lock_created = created
            return
        raise RunLockedError(f"could not lock {path}: it keeps being replaced by another process")

    def hold(self) -> None:
        """Take the lock again (after :meth:`release`), refusing if another process has it."""
        if self._lock_fd is None:
            self._lock()

    def release(self) -> None:
        """Drop the lock (the file stays: it is listed in the manifest)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self) -> None:
        self.release()

    # ---------------------------------------------------------------- start / abort
    def started(self) -> None:
        """The new run is set up: delete the run it replaced."""
        if self._aside is not None:
            shutil.rmtree(self._aside, ignore_errors=True)
            self._aside = None
            self._moved = []
        self._fresh = False

    def discard(self) -> None:
        """A new run failed before its first checkpoint (a setting it cannot use): remove
        what it wrote, as :meth:`abort` does for a failed start, so the corrected command
        is not refused. A resumed run, or one whose ``checkpoints`` folder holds a checkpoint,
        is left as it is (it is what ``--resume`` continues from)."""
        ckpts = self.path / "checkpoints"
        if not self._new or (ckpts.is_dir() and any(is_checkpoint_entry(p.name) for p in ckpts.iterdir())):
            return
        # entries of the user's that --overwrite kept: a manifest stays too, so that
        # --overwrite still works there (without them the folder is left empty)
        keep_manifest = any(not e.startswith(_ASIDE) for e in self._preexisting)
        self._new, self._fresh = False, True
        self.abort()
        if keep_manifest:
            self._write_manifest()  # afresh: no longer naming the replaced run's folder

    def abort(self) -> None:
        """Setting up failed: remove what this start wrote and put back a replaced run.
        A failed resume removes nothing."""
        if self._fresh:
            for name in {*RUN_ENTRIES, MANIFEST} - self._preexisting:
                p = self.path / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
        if self._aside is not None:
            for name in self._moved:
                os.replace(self._aside / name, self.path / name)
            if (self._aside / "checkpoints").is_dir():  # (emptied: the checkpoints of a kept folder)
                (self._aside / "checkpoints").rmdir()
            self._aside.rmdir()
            self._aside = None
            self._moved = []
        self._fresh = False
        self.release()
        if self._lock_created:
            (self.path / LOCK).unlink(missing_ok=True)
            self._lock_created = False
        if self._created_dir:
            try:
                self.path.rmdir()
            except OSError:
                pass
