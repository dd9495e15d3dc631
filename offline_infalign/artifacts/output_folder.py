"""The output folder of a run: one writer, never nested in another run's folder, and a full disk in one line.

`output_lock(out)` is what every stage (and `eval`, and the demo) holds for its whole run:
- **one writer**: an exclusive `flock` on `OUT/.infalign.lock`, refused at once naming the holder's pid; the OS
  releases it however the holder exits, so a killed run leaves no stale lock;
- **no nesting**: an `--out` inside another artifact (a folder with `manifest.json`), an unfinished run
  (`_work/`), a train output (`train_config.json`, `infalign_train.json`) or a folder another run holds locked
  is refused, and so is one *around* them (such a folder somewhere below it). One run's data never sits inside
  another's: each artifact's integrity check, resume and cleanup see only their own files. The demo, which
  writes its stages into subfolders of its own folder, passes `own_subfolders=True`; a folder this process
  holds itself is never "another run";
- **an unusable --out** (an existing file, a path below a file, a dangling symlink, no permission, the root of
  the filesystem) is one line;
- **nothing left behind when refused**: a folder the run created and left empty is removed, and a lock file it
  created in a folder where it wrote nothing else (`--out /`, a refused input) is removed too;
- **a full disk** (ENOSPC, a quota, torch's "[enforce fail at inline_container.cc]" of a checkpoint write) is
  one line naming the path: free space and rerun; finished chunks and complete checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

from ..core.errors import InfalignError

__all__ = ["output_lock", "LOCK", "disk_full_as_one_line", "is_disk_full"]

LOCK = ".infalign.lock"  # inside an output folder while a run writes it; holds the writer's pid
# Below a folder that is not new, look at most this many entries for nested runs: a folder that large is no
# artifact of ours, and the stage refuses it as a foreign folder anyway.
SCAN_LIMIT = 10_000
# Our own bulky subfolders, never another run's output: chunks, train checkpoints and token caches.
_OWN_BULK = ("_work", "checkpoints", "tokenized")
_HELD: set[str] = set()  # real paths of the output folders this process holds locked


def _blocker(out: Path) -> str | None:
    """Why `out` cannot be a folder because of what is at its path or above it: a file, a dangling link."""
    for p in [out, *out.parents]:
        if p.is_symlink() and not p.exists():
            return f"{str(p)!r} is a symbolic link to {os.readlink(p)!r}, which does not exist"
        if p.exists() and not p.is_dir():
            return f"{str(p)!r} is a file, not a folder"
    return None


def _make_folder(out: Path) -> bool:
    """Create `out` (and parents); True when it did not exist. An unusable path is one line."""
    if out.is_dir():
        return False
    blocker = _blocker(out)
    if blocker:
        raise InfalignError(f"cannot use --out {str(out)!r}: {blocker}; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise InfalignError(f"cannot create --out {str(out)!r}: no space left on its device; free space and "
                                "rerun") from None
        why = _blocker(out) or exc.strerror or type(exc).__name__
        raise InfalignError(f"cannot create --out {str(out)!r}: {why}; choose another --out") from None
    return True


def _locked_by_another(folder: Path) -> bool:
    """Whether another run holds `folder`'s lock now (a lock this process holds is its own)."""
    if os.path.realpath(folder) in _HELD or not (folder / LOCK).is_file():
        return False
    import fcntl

    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's shared lock, if it got one


def _is_artifact(folder: Path) -> bool:
    """A finished data artifact: its manifest.json is this package's (a JSON object naming a stage), not some
    other program's file of the same name."""
    path = folder / "manifest.json"
    try:
        if not path.is_file() or path.stat().st_size > (64 << 20):
            return False
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("stage"), str) and "package_version" in manifest


def _other_run(folder: Path) -> str | None:
    """What another run left in `folder` ('holds a finished artifact (manifest.json)', ...), or None (also when
    the folder cannot be read: nothing of ours can be inside it then)."""
    try:
        return _what_other_run(folder)
    except OSError:
        return None


def _what_other_run(folder: Path) -> str | None:
    if os.path.realpath(folder) in _HELD:
        return None
    if _is_artifact(folder):
        return "holds a finished artifact (manifest.json)"
    if (folder / "_work" / "config.json").is_file():
        return "holds an unfinished run (_work)"
    for marker, what in (("infalign_train.json", "a train output"), ("train_config.json", "a train run")):
        if (folder / marker).is_file():
            return f"holds {what} ({marker})"
    if _locked_by_another(folder):
        return "is being written by another run"
    return None


def _check_not_inside(out: Path) -> None:
    """Refuse an `out` below another run's folder (checked before anything is created)."""
    real = Path(os.path.realpath(out))
    for parent in real.parents:
        what = _other_run(parent)
        if what:
            raise InfalignError(f"--out {str(out)!r} is inside {str(parent)!r}, which {what}; one run's folder "
                                "never goes inside another's: choose an --out outside it")


def _check_not_around(out: Path) -> None:
    """Refuse an `out` that holds another run's folder somewhere below (looks at SCAN_LIMIT entries at most)."""
    real = Path(os.path.realpath(out))
    device = real.stat().st_dev
    seen = 0
    for top, dirs, files in os.walk(real, onerror=lambda exc: None):
        # Our own bulky folders are skipped, and so are other filesystems (/proc below `/`, mounts), like find -xdev.
        dirs[:] = [d for d in dirs if not (top == str(real) and d in _OWN_BULK) and _same_device(Path(top, d), device)]
        for d in dirs:
            what = _other_run(Path(top) / d)
            if what:
                inner = Path(top, d).relative_to(real)
                raise InfalignError(f"--out {str(out)!r} holds {str(inner)!r}, which {what}; one run's folder never "
                                    "goes around another's: choose another --out")
        seen += len(dirs) + len(files)
        if seen > SCAN_LIMIT:
            return


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) is a write that failed for lack of space."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if ("No space left on device" in text or "os error 28" in text or "errno 28" in text.lower()
                or "Disk quota exceeded" in text):
            return True
        # torch's checkpoint writer (PytorchStreamWriter) says only that fewer bytes were written than asked.
        if isinstance(exc, RuntimeError) and "inline_container.cc" in text and (
                "unexpected pos" in text or "file write failed" in text):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def disk_full_as_one_line(out: str | Path, kept: str = "finished chunks and complete checkpoints are kept"):
    """Turn a failed write for lack of space inside the block into one InfalignError naming the path."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        where = getattr(exc, "filename", None)
        place = f"{str(where)!r} (writing --out {str(out)!r})" if where else f"--out {str(out)!r}"
        raise InfalignError(f"no space left on the device of {place}: free space and rerun the same command; "
                            f"{kept}") from None


def _open_lock(out: Path) -> tuple[int, bool]:
    """(fd, created) of OUT/.infalign.lock; an existing folder we cannot write into is one line."""
    path = out / LOCK
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            return os.open(path, os.O_RDWR), False  # no O_TRUNC: the holder's pid must survive
    except OSError as exc:
        if is_disk_full(exc):
            raise InfalignError(f"cannot write into --out {str(out)!r}: no space left on its device; free space "
                                "and rerun") from None
        raise InfalignError(f"cannot write into --out {str(out)!r}: {exc.strerror or type(exc).__name__}; choose "
                            "another --out") from None


def _take_lock(out: Path, fcntl) -> tuple[int, bool]:
    """(fd, created) of OUT/.infalign.lock, locked exclusively; another holder is refused naming its pid.

    A refused run removes a lock file it created (module docstring), so the file opened may be gone by the
    time the lock is granted: then the new file is the one to lock, and this tries again."""
    for _ in range(20):
        fd, created = _open_lock(out)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InfalignError(f"output folder {str(out)!r} is being written by another run (pid {holder}); "
                                "wait for it to finish or choose another --out") from None
        if _same_file(fd, out / LOCK):
            return fd, created
        os.close(fd)
    raise InfalignError(f"output folder {str(out)!r}: its lock file keeps changing; is another run starting there?")


@contextlib.contextmanager
def output_lock(out: str | Path, own_subfolders: bool = False):
    """Hold an exclusive lock on the output folder `out` for the duration of a run (module docstring).

    own_subfolders: the run writes other runs' folders below its own (the demo), so folders below are not
    refused. (fcntl.flock: on platforms without it the folder is not locked.)
    """
    out = Path(out)
    real = os.path.realpath(out)
    if os.path.dirname(real) == real:  # a lock there, however brief, would refuse every run below it on the machine
        raise InfalignError(f"--out {str(out)!r} is the root of the filesystem; a run writes into a folder of its own: "
                            "choose another --out")
    _check_not_inside(out)
    created = _make_folder(out)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    before = set(os.listdir(out)) - {LOCK}
    fd, lock_created = _take_lock(out, fcntl)
    real = os.path.realpath(out)
    _HELD.add(real)
    try:
        with disk_full_as_one_line(out):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            if not own_subfolders:
                _check_not_around(out)
            yield
    finally:
        _HELD.discard(real)
        # Removed while still locked, so no other run can be inside: a run that wrote nothing leaves nothing.
        with contextlib.suppress(OSError):
            left = set(os.listdir(out)) - {LOCK}
            if created and not left:
                os.unlink(out / LOCK)
                out.rmdir()
            elif lock_created and left == before:
                os.unlink(out / LOCK)
        os.close(fd)  # releases the lock


def _same_device(path: Path, device: int) -> bool:
    try:
        return path.lstat().st_dev == device
    except OSError:
        return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
