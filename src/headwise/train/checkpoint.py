"""Checkpoints, written so that a run killed at any moment loses nothing beyond
its last complete checkpoint.

Layout inside a run directory::

    checkpoints/step-00001000/model.safetensors   weights (safetensors)
    checkpoints/step-00001000/trainer.pt          optimizer, scheduler, RNG states, step
    checkpoints/step-00001000/manifest.json       size and SHA-256 of each file above
    checkpoints/latest                            name of the newest complete checkpoint

A checkpoint is written into a temporary folder, flushed, and renamed into place;
only then is ``latest`` replaced (``os.replace`` is atomic). A checkpoint is
*intact* when every file its manifest lists is present with the recorded size and
hash; readers take the newest intact one (:func:`newest_intact`) and say when they
skip a broken one. Retention never deletes the newest intact checkpoint, nor a folder
holding a file headwise did not write (it says so), and a full
disk while saving leaves the previous checkpoint as it was. A folder is removed by
renaming it to a temporary name first; the temporary folders of a save or removal that
was killed are swept by the next save.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "newest_intact", "checkpoint_step",
           "is_checkpoint_entry",
           "verify_checkpoint", "checkpoint_report", "CheckpointError", "DiskFullError", "rng_state", "set_rng_state",
           "interruption_note"]

MANIFEST = "manifest.json"
FILES = ("model.safetensors", "trainer.pt")


class CheckpointError(ValueError):
    """A checkpoint is broken (missing, truncated or altered files) or unreadable."""


class DiskFullError(OSError):
    """The disk filled up while a checkpoint was being written."""


def rng_state(extra: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random state a training step touches: Python, NumPy, torch (CPU and
    CUDA) and any named ``torch.Generator``s."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the legacy global state is what code uses)
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {k: g.get_state() for k, g in (extra or {}).items()},
    }
    return state


def set_rng_state(state: dict[str, Any], extra: dict[str, torch.Generator] | None = None) -> list[str]:
    """Restore what :func:`rng_state` captured. Returns the names of the ``extra``
    generators left as they were because their saved state is another kind of device's
    (a CUDA generator's state does not fit a CPU one, nor the reverse: a run resumed
    with another ``--device``). CUDA states are restored on the GPUs there are."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    left = []
    for k, g in (extra or {}).items():
        if k in state["generators"]:
            saved = state["generators"][k]
            if saved.numel() != g.get_state().numel():
                left.append(k)
                continue
            g.set_state(saved)
    return left


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _step_dirs(root: Path) -> list[Path]:
    """The checkpoint folders (``step-N``) under ``root``, newest first. Temporary ones
    and any other folder (``step-old``, a copy) are not checkpoints: never read, never
    removed by retention."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)),
                  key=checkpoint_step, reverse=True)


#: the temporary folders of saves (``.step-N.tmp-XXXX``) and removals (``.step-N.removed``):
#: never a checkpoint, and no name a user would give a folder of theirs
_TEMPORARY = re.compile(r"\.step-\d+\.(tmp-[a-z0-9_]+|removed)")


def is_checkpoint_entry(name: str) -> bool:
    """Whether ``name``, in a run's checkpoints folder, is what saves write there: a checkpoint
    (``step-N``), the ``latest`` pointer (or its temporary) or a save's or removal's
    temporary folder. Anything else there is someone else's (a copy kept, a note)."""
    return (name in ("latest", ".latest.tmp") or re.fullmatch(r"step-\d+", name) is not None
            or _TEMPORARY.fullmatch(name) is not None)


def _remove(path: Path) -> None:
    """Remove the checkpoint folder ``path``: renamed to a temporary name first, so that
    a process killed while deleting leaves no half checkpoint (the next save sweeps it)."""
    doomed = path.with_name(f".{path.name}.removed")
    try:
        os.replace(path, doomed)
    except OSError:  # (rmtree then says what stops it, where that matters)
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)


def _sweep(root: Path) -> None:
    """Remove what saves and removals killed before they finished left in ``root``:
    temporary folders, each as large as a checkpoint (only one process writes a run)."""
    for p in root.iterdir():
        if _TEMPORARY.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, trainer_state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep`` of them (never
    deleting the newest intact one). A full disk raises :class:`DiskFullError` and
    leaves every earlier checkpoint untouched."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _sweep(root)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        # save_model handles tied (shared) tensors, which save_file refuses
        # "manifest" marks the weights as written with a manifest.json (so losing it is noticed)
        save_model(model, str(tmp / "model.safetensors"), metadata={"step": str(step), "manifest": MANIFEST})
        torch.save({**trainer_state, "step": step}, tmp / "trainer.pt")
        manifest = {"step": step, "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)}
                                            for f in FILES}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        final = root / name
        if final.exists():  # a broken or older copy of the same step (a resume from an earlier one)
            _remove(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        pointer = root / ".latest.tmp"
        pointer.write_text(name + "\n")
        os.replace(pointer, root / "latest")
        _fsync_dir(root)
    except BaseException as e:
        refused = _no_room(e, root, tmp)  # (asked before the partial files are removed)
        shutil.rmtree(tmp, ignore_errors=True)
        if refused is not None:
            previous = newest_intact(run_dir)
            kept = f"the previous checkpoint {previous[0].name} is intact" if previous[0] else "no earlier checkpoint"
            if refused == errno.EFBIG:
                raise DiskFullError(errno.EFBIG, f"could not write checkpoint {name} in {root}: File too large, "
                                    f"a file of it is larger than this process may write (the file size limit, "
                                    f"ulimit -f, or the file system's largest file) ({kept}); raise the limit, or "
                                    f"move the run directory where larger files are allowed, and resume with "
                                    f"--resume") from e
            raise DiskFullError(errno.ENOSPC, f"the disk is full: could not write checkpoint {name} in {root} "
                                f"({kept}); free some space and resume with --resume") from e
        raise
    # retention: the newest `keep` folders, and never the newest intact one (the one just written),
    # nor one that holds a file of someone else's (a user's eval.json)
    for old in _step_dirs(root)[keep:]:
        if old == final:
            continue
        foreign = _foreign_files(old)
        if foreign:
            print(f"warning: checkpoint {old.name} is kept beyond the newest {keep}: it holds "
                  f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which headwise did not write; "
                  f"move that out of {old} and the next save removes the checkpoint", file=sys.stderr)
            continue
        _remove(old)
    return final


def _foreign_files(path: Path) -> list[str]:
    """What the checkpoint folder ``path`` holds besides the files a save writes there."""
    try:
        return sorted(p.name for p in path.iterdir() if p.name not in (*FILES, MANIFEST))
    except OSError:  # (not readable: rmtree then says what stops it, where that matters)
        return []


#: the errors of a write refused for want of room: a full disk, a quota, a file past the size limit
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _no_room(e: BaseException, root: Path, tmp: Path) -> int | None:
    """Why writing the checkpoint in ``tmp`` under ``root`` failed for want of room, as an
    errno of :data:`_NO_ROOM` (None if it did not): an OSError saying so, or a library's
    error that does not: safetensors' carries the OS's message ("os error 27"), and
    torch.save says only "unexpected pos" (then a byte more is written to each partial file
    to ask the file system why, and a disk with under 1 MiB free counts as full)."""
    if not isinstance(e, Exception):  # Ctrl-C, a kill
        return None
    if isinstance(e, OSError) and e.errno in _NO_ROOM:
        return e.errno
    code = re.search(r"os error (\d+)", str(e))
    if code and int(code.group(1)) in _NO_ROOM:
        return int(code.group(1))
    if "No space left on device" in str(e):
        return errno.ENOSPC
    for f in sorted(tmp.iterdir()) if tmp.is_dir() else ():
        try:
            with open(f, "ab") as fh:
                fh.write(b"\0")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as refused:
            if refused.errno in _NO_ROOM:
                return refused.errno
    try:
        return errno.ENOSPC if shutil.disk_usage(root).free < 1 << 20 else None
    except OSError:
        return None


def verify_checkpoint(path: Path) -> str | None:
    """``None`` if the checkpoint at ``path`` is intact, else what is wrong with it."""
    path = Path(path)
    if not path.is_dir():
        return f"{path.name} is missing"
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        missing = [f for f in FILES if not (path / f).is_file()]
        if missing:
            return f"{', '.join(missing)} missing"
        try:
            with safe_open(str(path / "model.safetensors"), framework="pt") as f:
                written_with_manifest = MANIFEST in (f.metadata() or {}).values()
        except Exception:  # a damaged header
            return "model.safetensors is unreadable"
        # written before manifests existed, all that can be checked is that the files are there
        return f"{MANIFEST} missing" if written_with_manifest else None
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):  # not JSON, not UTF-8, not an object with "files"
        return f"{MANIFEST} is unreadable"
    if not _manifest_files_ok(files):
        return f"{MANIFEST} is damaged: it does not give the size and hash of each checkpoint file"
    problems = []
    for fname, want in files.items():
        f = path / fname
        if not f.is_file():
            problems.append(f"{fname} missing")
        elif f.stat().st_size != want["bytes"]:
            problems.append(f"{fname} has {f.stat().st_size} bytes, {want['bytes']} were written")
        elif _sha256(f) != want["sha256"]:
            problems.append(f"{fname} does not match the hash recorded when it was written")
    return "; ".join(problems) or None


def _manifest_files_ok(files: Any) -> bool:
    """Whether a manifest's ``files`` is what :func:`save_checkpoint` writes: each of
    :data:`FILES` mapped to ``{"bytes": int, "sha256": str}``."""
    if not isinstance(files, dict) or not set(FILES) <= set(files):
        return False
    return all(isinstance(want, dict) and type(want.get("bytes")) is int and isinstance(want.get("sha256"), str)
               for want in files.values())


def newest_intact(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint of ``run_dir`` (or None) and one line for each newer
    checkpoint that was skipped because it is broken."""
    skipped = []
    for path in _step_dirs(Path(run_dir) / "checkpoints"):
        problem = verify_checkpoint(path)
        if problem is None:
            return path, skipped
        skipped.append(f"checkpoint {path.name} is broken ({problem})")
    return None, skipped


def checkpoint_step(path: Path | None) -> int:
    """The step a checkpoint folder (``step-N``) holds; 0 for None (no checkpoint)."""
    return int(Path(path).name.split("-")[1]) if path is not None else 0


def checkpoint_report(run_dir: Path) -> list[tuple[str, str | None]]:
    """``(name, problem or None)`` for every checkpoint of ``run_dir``, newest first."""
    return [(p.name, verify_checkpoint(p)) for p in _step_dirs(Path(run_dir) / "checkpoints")]


def interruption_note(run_dir: Path, how: str = "interrupted") -> str:
    """What a run stopped now (``how``: interrupted by Ctrl-C, say) keeps, and how to go on:
    one line. The newest checkpoint is named without hashing it (this is said at once; a
    resume verifies it)."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        return f"{how} before the run in {run_dir} started; nothing was kept"
    steps = _step_dirs(run_dir / "checkpoints")
    kept = f"its last checkpoint is {steps[0].name}" if steps else "no checkpoint was written yet"
    return f"{how}; {kept}: continue the run with headwise train --out {shlex.quote(str(run_dir))} --resume"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of ``run_dir``, or None when there is none. Raises
    :class:`CheckpointError` when checkpoints exist but every one is broken."""
    path, skipped = newest_intact(run_dir)
    if path is None and skipped:
        raise CheckpointError(f"{run_dir}: no intact checkpoint: " + "; ".join(skipped))
    return path


def load_checkpoint(path: Path, model: nn.Module, map_location: str | torch.device = "cpu", *,
                    verify: bool = True) -> dict[str, Any]:
    """Load weights into ``model`` (strictly), onto ``map_location``, and return the
    trainer state, on the CPU: the random states must be CPU tensors to be restored, and
    an optimizer's ``load_state_dict`` moves its state to its parameters' device. A broken
    or unreadable checkpoint raises :class:`CheckpointError` naming the file.
    ``verify=False`` skips the hash check, for a path :func:`newest_intact` has just verified."""
    path = Path(path)
    problem = verify_checkpoint(path) if verify else None
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is broken: {problem}")
    try:
        # (mapped onto a GPU, torch.set_rng_state refused it: "RNG state must be a torch.ByteTensor")
        state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        raise CheckpointError(f"cannot read {path / 'trainer.pt'}: {e}") from e
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False,
                                         device=str(map_location))
    except Exception as e:  # SafetensorError for a damaged file
        raise CheckpointError(f"cannot read {path / 'model.safetensors'}: {e}") from e
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this model: missing {_some(missing)}; "
                         f"unexpected {_some(unexpected)}")
    return state


def _some(names, shown: int = 3) -> str:
    """``n tensors (a, b, c, ...)``: how many names, and the first few, sorted."""
    names = sorted(names)
    if not names:
        return "none"
    head = ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
    return f"{len(names)} tensor{'s' if len(names) != 1 else ''} ({head})"
