"""Atomic outputs: a file or a whole directory appears all at once, or not at all.

Files go through a temporary sibling and ``os.replace``; directories are built in a
``.NAME.*.partial`` sibling and renamed into place on success (removed on failure). Both get
the modes an ordinary ``open()`` / ``mkdir()`` would give under the process umask, not the
private modes of ``mkstemp`` / ``mkdtemp``.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> with atomic_output_dir(root / "out") as tmp:
...     _ = write_text_atomic(tmp / "config.json", "{}")
>>> sorted(p.name for p in root.iterdir())
['out']
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from workbench.errors import WorkbenchError

__all__ = ["atomic_output_dir", "check_output_dir", "write_bytes_atomic", "write_text_atomic"]


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _ordinary_mode(path: Path, *, directory: bool) -> None:
    """Give a mkstemp/mkdtemp product the mode a plain open()/mkdir() would (0600/0700 otherwise)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "x.bin"
    >>> write_bytes_atomic(p, b"abc").read_bytes()
    b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "x.txt"
    >>> write_text_atomic(p, "hi").read_text()
    'hi'
    """
    return write_bytes_atomic(path, text.encode("utf-8"))


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
def atomic_output_dir(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out_dir``; rename it to ``out_dir`` on success.

    On an exception the temporary directory is removed and ``out_dir`` is untouched. An
    existing ``out_dir`` is an error unless ``overwrite`` (then it is replaced at the end).

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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    _ordinary_mode(tmp, directory=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
