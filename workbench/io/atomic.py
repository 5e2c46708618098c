"""Atomic outputs: a file or a whole directory appears all at once, or not at all.

Files go through a temporary sibling and ``os.replace``; directories are built in a
``.NAME.*.partial`` sibling and renamed into place on success (removed on failure). Both get
the modes an ordinary ``open()`` / ``mkdir()`` would give under the process umask, not the
private modes of ``mkstemp`` / ``mkdtemp``.

A process killed outright (SIGKILL, power loss) cannot clean up, so every temporary sibling
is named after its writer: ``.NAME.w<pid>-<start>-<host>-<boot>.<random>.partial`` (``.tmp``
for files, ``.old`` for a replaced output on its way out), with the process's start time and
hashes of the host name and boot id. The next atomic write of the same NAME removes the
siblings whose writer is gone (no such process, a different process under a reused pid, or a
previous boot of this host) and reports each in one line on stderr (or to ``report``).
Siblings of live writers, of other hosts (a shared file system) and of unknown writers are left
alone.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> with atomic_output_dir(root / "out") as tmp:
...     _ = write_text_atomic(tmp / "config.json", "{}")
>>> sorted(p.name for p in root.iterdir())
['out']
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from workbench.errors import WorkbenchError

__all__ = [
    "atomic_output_dir",
    "check_output_dir",
    "remove_stale_partials",
    "write_bytes_atomic",
    "write_text_atomic",
    "writer_tag",
]

Report = Callable[[str], None]


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _ordinary_mode(path: Path, *, directory: bool) -> None:
    """Give a mkstemp/mkdtemp product the mode a plain open()/mkdir() would (0600/0700 otherwise)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


# ----------------------------------------------------------------------------------------
# who wrote a temporary sibling, and whether that writer is gone

_TAG = re.compile(r"w(\d+)-(\d+)-([0-9a-f]{8})-([0-9a-f]{8})\.[^.]+\.(partial|tmp|old)")
_UNKNOWN = "0" * 8


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of process ``pid`` from /proc; None if unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


def _boot_hash() -> str:
    try:
        return _short_hash(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:  # not Linux: reboots cannot be told apart, the pid check still holds
        return _UNKNOWN


_HOST, _BOOT = _short_hash(socket.gethostname()), _boot_hash()


def writer_tag(pid: int | None = None) -> str:
    r"""The writer part of this process's temporary names: ``w<pid>-<start>-<host>-<boot>``.

    >>> re.fullmatch(r"w\d+-\d+-[0-9a-f]{8}-[0-9a-f]{8}", writer_tag()) is not None
    True
    """
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return f"w{pid}-{stat[1] if stat else 0}-{_HOST}-{_BOOT}"


def _writer_gone(pid: int, start: int, host: str, boot: str) -> bool:
    if host != _HOST:
        return False  # another machine's writer (a shared file system) may well be alive
    if boot != _BOOT and _UNKNOWN not in (boot, _BOOT):
        return True  # written before this host last booted
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return False
    state, now_start = stat
    return state in ("Z", "X") or (start != 0 and now_start != start)  # killed, unreaped / pid reused


def _report_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def remove_stale_partials(target: str | os.PathLike, report: Report | None = None) -> list[Path]:
    """Remove the temporary siblings of ``target`` (``.NAME.w…partial`` / ``.tmp`` / ``.old``)
    whose writer is gone, reporting each in one line; returns the removed paths.

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> (root / ".out.w999999999-1-{}-{}.abc.partial".format(_HOST, _BOOT)).mkdir()
    >>> [p.name[:15] for p in remove_stale_partials(root / "out", report=print)]  # doctest: +ELLIPSIS
    removed stale partial output .../.out.w999999999-... (its writer, process 999999999, is gone: an interrupted run)
    ['.out.w999999999']
    """
    target = Path(target)
    prefix = f".{target.name}."
    try:
        siblings = [e for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for entry in siblings:
        m = _TAG.fullmatch(entry.name[len(prefix) :])
        if m is None or not _writer_gone(int(m[1]), int(m[2]), m[3], m[4]):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if not os.path.lexists(path):
            removed.append(path)
            what = "output" if m[5] != "tmp" else "file"
            (report or _report_stderr)(
                f"removed stale partial {what} {path} (its writer, process {m[1]}, is gone: an interrupted run)"
            )
    return removed


# ----------------------------------------------------------------------------------------
# atomic files and directories


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, report: Report | None = None) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    Stale temporary files of ``path`` left by killed writers are removed first
    (:func:`remove_stale_partials`, reported to ``report``, default stderr).

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "x.bin"
    >>> write_bytes_atomic(p, b"abc").read_bytes()
    b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path, report)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _ordinary_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, report: Report | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (as :func:`write_bytes_atomic`).

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "x.txt"
    >>> write_text_atomic(p, "hi").read_text()
    'hi'
    """
    return write_bytes_atomic(path, text.encode("utf-8"), report=report)


def check_output_dir(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``out_dir`` as an absolute path; an error if it exists and ``overwrite`` is not set.

    Commands call it before any work, so a run that would be refused at the end is refused
    at the start; :func:`atomic_output_dir` checks again when it writes.

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> check_output_dir(root / "new") == (root / "new").absolute()
    True
    """
    out = Path(out_dir).absolute()
    if out.exists() and not overwrite:
        raise WorkbenchError(f"output directory {out} already exists (pass --overwrite / overwrite=True to replace it)")
    return out


@contextlib.contextmanager
def atomic_output_dir(
    out_dir: str | os.PathLike, *, overwrite: bool = False, report: Report | None = None
) -> Iterator[Path]:
    """Yield a temporary directory next to ``out_dir``; rename it to ``out_dir`` on success.

    On an exception the temporary directory is removed and ``out_dir`` is untouched. An
    existing ``out_dir`` is an error unless ``overwrite`` (then it is replaced at the end).
    Partial outputs of ``out_dir`` left by killed writers are removed first
    (:func:`remove_stale_partials`, each reported in one line to ``report``, default stderr).

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> with atomic_output_dir(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("1")
    >>> sorted(p.name for p in (root / "out").iterdir())
    ['a.txt']
    >>> with atomic_output_dir(root / "out") as tmp:
    ...     pass
    Traceback (most recent call last):
    workbench.errors.WorkbenchError: output directory ... already exists (pass --overwrite / overwrite=True to replace it)
    """
    out = check_output_dir(out_dir, overwrite=overwrite)
    if out.exists() and not out.is_dir():
        raise WorkbenchError(f"output path {out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out, report)
    tag = writer_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{tag}.", suffix=".partial", dir=out.parent))
    _ordinary_mode(tmp, directory=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.{tag}.", suffix=".old", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
