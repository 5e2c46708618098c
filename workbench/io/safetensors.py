"""Safetensors files: a header parser with precise errors, lazy zero-copy reads, streamed writes.

Reading: :class:`SafetensorsFile` parses and checks the header (every tensor's byte range,
the file size), then serves tensors as views of a copy-on-write memory map, or copies a
range of one into a caller's buffer with plain reads. Writing: :class:`SafetensorsWriter`
streams tensors into (sharded) files whose headers are planned up front;
:func:`write_safetensors` writes one small file in one go.

>>> import tempfile, torch
>>> p = write_safetensors(Path(tempfile.mkdtemp()) / SAFE_SINGLE, {"w": torch.arange(6.0).reshape(2, 3)})
>>> f = SafetensorsFile(p)
>>> list(f.entries), f.get("w")[1].tolist()
(['w'], [3.0, 4.0, 5.0])
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from workbench.errors import WorkbenchError

__all__ = ["SAFE_INDEX", "SAFE_SINGLE", "SafetensorsFile", "SafetensorsWriter", "write_safetensors"]

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"

# safetensors dtype codes <-> torch dtypes
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
if hasattr(torch, "float8_e4m3fn"):
    _ST_DTYPES["F8_E4M3"] = torch.float8_e4m3fn
    _ST_DTYPES["F8_E5M2"] = torch.float8_e5m2
_TORCH_TO_ST = {v: k for k, v in _ST_DTYPES.items()}

_HEADER_LIMIT = 100 * 1024 * 1024


class SafetensorsFile:
    """One safetensors file opened read-only: its header parsed and checked up front, tensors
    served as views of a copy-on-write memory map (:meth:`get`) or read into a buffer
    (:meth:`read_into`). ``entries`` maps each tensor name to (dtype, shape, begin, end),
    byte offsets relative to the data section.

    Raises WorkbenchError naming the file for a truncated or corrupt file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise WorkbenchError(f"{path}: truncated safetensors file (no header)")
                (n,) = struct.unpack("<Q", raw)
                if n == 0 or n > _HEADER_LIMIT or 8 + n > size:
                    raise WorkbenchError(
                        f"{path}: corrupt or truncated safetensors file (header length {n}, file size {size})"
                    )
                header_bytes = f.read(n)
        except OSError as err:
            raise WorkbenchError(f"{path}: cannot read ({err.strerror or err})") from None
        try:
            header = json.loads(header_bytes.decode("utf-8").rstrip(" \x00"))
            if not isinstance(header, dict):
                raise ValueError("header is not an object")
        except (UnicodeDecodeError, ValueError) as err:
            raise WorkbenchError(f"{path}: corrupt safetensors header ({err})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        max_end = 0
        for name, info in header.items():
            try:
                dtype = _ST_DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise WorkbenchError(f"{path}: corrupt safetensors entry for tensor {name!r}") from None
            numel = math.prod(shape)
            if end - begin != numel * dtype.itemsize or begin < 0:
                raise WorkbenchError(
                    f"{path}: tensor {name!r} has {end - begin} bytes, expected {numel * dtype.itemsize}"
                )
            max_end = max(max_end, end)
            self.entries[name] = (dtype, shape, begin, end)
        if self.data_start + max_end != size:
            raise WorkbenchError(
                f"{path}: truncated or corrupt safetensors file "
                f"({size} bytes on disk, header describes {self.data_start + max_end})"
            )
        self._mmap: mmap.mmap | None = None
        self._fd: int | None = None
        self._lock = threading.Lock()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _map(self) -> mmap.mmap:
        with self._lock:
            if self._mmap is None:
                with open(self.path, "rb") as f:
                    # ACCESS_COPY: writable views for torch, never written back to the file.
                    self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            return self._mmap

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as a view of the memory map (a copy when its offset is misaligned)."""
        dtype, shape, begin, end = self.entries[name]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        offset = self.data_start + begin
        mm = self._map()
        if offset % dtype.itemsize:
            buf = bytearray(mm[offset : offset + end - begin])
            return torch.frombuffer(buf, dtype=dtype).reshape(shape)
        return torch.frombuffer(mm, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=offset).reshape(shape)

    def read_into(self, name: str, out: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Read ``out.numel()`` elements of tensor ``name`` from flat index ``start`` with
        ``os.preadv`` into ``out`` (contiguous CPU), converting the dtype when needed."""
        dtype, shape, begin, end = self.entries[name]
        begin += start * dtype.itemsize
        end = begin + out.numel() * dtype.itemsize
        nbytes = end - begin
        if nbytes == 0:
            return out
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
        if out.dtype == dtype:
            target = out
        else:
            target = torch.empty(out.numel(), dtype=dtype)
        mv = memoryview(target.view(torch.uint8).reshape(-1).numpy())
        done, offset = 0, self.data_start + begin
        while done < nbytes:
            n = os.preadv(self._fd, [mv[done:nbytes]], offset + done)
            if n <= 0:
                raise WorkbenchError(f"{self.path}: unexpected end of file reading tensor {name!r}")
            done += n
        if target is not out:
            out.copy_(target.reshape(out.shape))
        return out

    def raw_bytes(self, name: str) -> memoryview:
        """The stored bytes of tensor ``name`` (a view of the memory map, for fingerprints)."""
        _, _, begin, end = self.entries[name]
        return memoryview(self._map())[self.data_start + begin : self.data_start + end]


def _header_for(
    specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None
) -> tuple[bytes, int]:
    """The length-prefixed, 8-byte-padded header of a file holding ``specs`` back to back, and
    the size of its data section."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _TORCH_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


class SafetensorsWriter:
    """Stream tensors into (sharded) safetensors files whose layout is planned up front.

    ``specs`` lists (name, dtype, shape) in write order; ``add(name, tensor)`` must then be
    called in that order. Shards are cut at ``max_shard_bytes``. ``close()`` writes the
    index when there is more than one shard and returns the file names.
    """

    def __init__(
        self,
        out_dir: Path,
        specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
        *,
        max_shard_bytes: int = 5 * 1024**3,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.metadata = {"format": "pt", **(metadata or {})}
        shards: list[list[tuple[str, torch.dtype, tuple[int, ...]]]] = [[]]
        size = 0
        for spec in specs:
            nbytes = math.prod(spec[2]) * spec[1].itemsize
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(spec)
            size += nbytes
        self.shards = shards
        k = len(shards)
        self.file_names = [SAFE_SINGLE] if k == 1 else [f"model-{i + 1:05d}-of-{k:05d}.safetensors" for i in range(k)]
        self._order = [(si, spec) for si, shard in enumerate(shards) for spec in shard]
        self._pos = 0
        self._fh: BinaryIO | None = None
        self._cur = -1
        self._written = 0
        self.total_bytes = 0

    def _open(self, si: int) -> None:
        if self._fh is not None:
            self._fh.close()
        header, nbytes = _header_for(self.shards[si], self.metadata)
        self._fh = open(self.out_dir / self.file_names[si], "wb")
        with contextlib.suppress(OSError, AttributeError):  # reserve the blocks up front (faster on ext4/xfs)
            os.posix_fallocate(self._fh.fileno(), 0, len(header) + nbytes)
        self._fh.write(header)
        self._cur = si

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write the whole tensor ``name`` (the next one in plan order)."""
        _, (want, dtype, shape) = self._order[self._pos]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape) or self._written:
            raise RuntimeError(
                f"writer expected {want} {dtype} {shape}, got {name} {tensor.dtype} {tuple(tensor.shape)}"
            )
        self.add_part(name, tensor)

    def add_part(self, name: str, part: torch.Tensor) -> None:
        """Write the next consecutive elements of tensor ``name`` (flattened order)."""
        si, (want, dtype, shape) = self._order[self._pos]
        if name != want or part.dtype != dtype:
            raise RuntimeError(f"writer expected {want} {dtype}, got {name} {part.dtype}")
        expected = math.prod(shape) * dtype.itemsize
        if si != self._cur:
            self._open(si)
        t = part.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        nbytes = t.numel() * t.element_size()
        if self._written + nbytes > expected:
            raise RuntimeError(f"writer: too many bytes for {name}")
        if nbytes:
            self._fh.write(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
        self._written += nbytes
        if self._written == expected:
            self.total_bytes += expected
            self._written = 0
            self._pos += 1

    def close(self) -> list[str]:
        """Finish the files (and the index when sharded); the names of the files written."""
        if self._pos != len(self._order):
            raise RuntimeError(f"writer closed after {self._pos} of {len(self._order)} tensors")
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for si in range(len(self.shards)):  # shards with only empty tensors
            p = self.out_dir / self.file_names[si]
            if not p.exists():
                header, _ = _header_for(self.shards[si], self.metadata)
                p.write_bytes(header)
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {spec[0]: self.file_names[si] for si, spec in self._order},
            }
            (self.out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return list(self.file_names) + ([SAFE_INDEX] if len(self.shards) > 1 else [])


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write one safetensors file (to a path inside an atomic output dir, or anywhere)."""
    path = Path(path)
    specs = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    header, _ = _header_for(specs, {"format": "pt", **(metadata or {})})
    with open(path, "wb") as f:
        f.write(header)
        for t in tensors.values():
            t = t.detach().cpu().contiguous()
            if t.numel():
                f.write(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
    return path
