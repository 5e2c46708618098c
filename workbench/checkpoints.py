"""Open and write Hugging Face checkpoint directories, lazily and atomically.

Reading: a model directory (``config.json`` plus ``model.safetensors`` or a sharded
``model.safetensors.index.json``) or a Hub id. Tensors are memory-mapped and read one at a
time, so nothing ever needs a whole model in RAM. A tied ``lm_head.weight`` that is absent
from the files is exposed as a virtual alias of the input embeddings. ``.bin`` pickles are
refused unless ``allow_bin=True``, and then loaded with ``torch.load(weights_only=True)``.

Writing: :class:`SafetensorsWriter` streams tensors into (sharded) safetensors files whose
headers are known in advance; :func:`atomic_output_dir` makes every output directory appear
all at once or not at all.

>>> import tempfile, torch
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp()) / "m"
>>> with atomic_output_dir(d) as tmp:
...     _ = write_safetensors(tmp / "model.safetensors", {"w": torch.ones(2, 3)})
...     _ = write_text_atomic(tmp / "config.json", '{"model_type": "llama"}')
>>> ck = open_checkpoint(d)
>>> ck.names(), ck.shape("w"), ck.get("w").sum().item()
(['w'], (2, 3), 6.0)
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import shutil
import struct
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import torch

from workbench.errors import WorkbenchError
from workbench.fingerprints import tensor_bytes, tensor_digest

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "Checkpoint",
    "SafetensorsWriter",
    "atomic_output_dir",
    "copy_tokenizer_files",
    "load_model",
    "load_tokenizer",
    "model_from_state_dict",
    "open_checkpoint",
    "save_state_dict",
    "write_bytes_atomic",
    "write_random_llama",
    "write_safetensors",
    "write_text_atomic",
]

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
LM_HEAD = "lm_head.weight"
EMBED_CANDIDATES = ("model.embed_tokens.weight", "transformer.wte.weight", "embed_tokens.weight")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)

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


# ----------------------------------------------------------------------------------------
# atomic writes


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


# ----------------------------------------------------------------------------------------
# safetensors reading (own header parser: precise errors, zero-copy memory maps)


class _SafetensorsFile:
    """One memory-mapped safetensors file; tensors are views into a copy-on-write map."""

    def __init__(self, path: Path):
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
            numel = 1
            for s in shape:
                numel *= s
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
        _, _, begin, end = self.entries[name]
        return memoryview(self._map())[self.data_start + begin : self.data_start + end]


class Checkpoint:
    """A Hugging Face model directory opened read-only, tensors read lazily.

    Use :func:`open_checkpoint` to make one. ``names()`` lists the tensors (with a virtual
    ``lm_head.weight`` when the embeddings are tied), ``get(name)`` returns one tensor.
    """

    def __init__(self, path: Path, config: dict, files: dict[str, Any], *, source: str | None = None):
        self.path = path
        self.config = config
        self.source = source or str(path)
        self._files = files  # tensor name -> _SafetensorsFile or a dict from a .bin
        self._fingerprint: str | None = None
        embed = next((e for e in EMBED_CANDIDATES if e in files), None)
        self.tied: bool = LM_HEAD not in files and embed is not None and bool(
            config.get("tie_word_embeddings", True)
        )
        self._alias = {LM_HEAD: embed} if self.tied else {}
        self._names = list(files) + ([LM_HEAD] if self.tied else [])

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self._names)} tensors{', tied' if self.tied else ''})"

    def names(self) -> list[str]:
        """Tensor names in file order (``lm_head.weight`` last when it is a tied alias)."""
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._files or name in self._alias

    def _resolve(self, name: str) -> str:
        name = self._alias.get(name, name)
        if name not in self._files:
            raise WorkbenchError(f"{self.path}: tensor {name!r} not found in checkpoint")
        return name

    def file_of(self, name: str) -> Path:
        """The file holding tensor ``name``."""
        src = self._files[self._resolve(name)]
        return src.path if isinstance(src, _SafetensorsFile) else src["__path__"]

    def shape(self, name: str) -> tuple[int, ...]:
        src = self._files[real := self._resolve(name)]
        if isinstance(src, _SafetensorsFile):
            return src.entries[real][1]
        return tuple(src[real].shape)

    def dtype(self, name: str) -> torch.dtype:
        src = self._files[real := self._resolve(name)]
        if isinstance(src, _SafetensorsFile):
            return src.entries[real][0]
        return src[real].dtype

    def read_into(self, name: str, out: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Copy elements ``start .. start + out.numel()`` of the flattened tensor ``name`` into
        the contiguous CPU tensor ``out`` (any dtype) with plain file reads: no memory map,
        so reading a model does not grow the process's resident memory."""
        src = self._files[real := self._resolve(name)]
        if start < 0 or start + out.numel() > self.numel(name):
            raise ValueError(f"read_into: {name} has {self.numel(name)} elements, asked {start}+{out.numel()}")
        if isinstance(src, _SafetensorsFile):
            return src.read_into(real, out, start)
        out.copy_(src[real].reshape(-1)[start : start + out.numel()].reshape(out.shape))
        return out

    def numel(self, name: str) -> int:
        n = 1
        for s in self.shape(name):
            n *= s
        return n

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor (a view of the memory map on CPU; a copy on another device)."""
        src = self._files[real := self._resolve(name)]
        t = src.get(real) if isinstance(src, _SafetensorsFile) else src[real]
        if torch.device(device).type != "cpu":
            t = t.to(device, non_blocking=False)
        return t

    def num_layers(self) -> int:
        """``num_hidden_layers`` from the config, else one more than the highest layer index."""
        n = self.config.get("num_hidden_layers") or self.config.get("n_layer")
        if n:
            return int(n)
        idx = [layer_index(nm) for nm in self._names]
        return max((i for i in idx if i is not None), default=-1) + 1

    def _raw_bytes(self, name: str) -> bytes:
        src = self._files[name]
        return src.raw_bytes(name) if isinstance(src, _SafetensorsFile) else tensor_bytes(src[name])

    def fingerprint(self) -> str:
        """sha256 over names, dtypes, shapes and bytes of every stored tensor (memoised)."""
        if self._fingerprint is None:
            key = stat_key(self)
            cached = _FINGERPRINTS.get(key)
            if cached is None:
                cached = tensor_digest(
                    ((name, self.dtype(name), self.shape(name), self._raw_bytes(name)) for name in sorted(self._files)),
                    trailer=f"tied={self.tied}",
                )
                _FINGERPRINTS[key] = cached
            self._fingerprint = cached
        return self._fingerprint


_FINGERPRINTS: dict[tuple, str] = {}


def stat_key(ck: Checkpoint) -> tuple:
    """(path, size, mtime) of each file behind ``ck``: changes whenever a file is rewritten."""
    sources = {id(src): src for src in ck._files.values()}.values()  # one entry per file, not per tensor
    files = sorted({str(src.path if isinstance(src, _SafetensorsFile) else src["__path__"]) for src in sources})
    return tuple((f, st.st_size, st.st_mtime_ns) for f in files for st in (os.stat(f),))


def resolve_device(device: "str | torch.device | None") -> str:
    """The device to run on: ``None`` / ``"auto"`` is CUDA when present, else the CPU; a CUDA
    device on a machine without CUDA is one clear error.

    >>> resolve_device("cpu")
    'cpu'
    """
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device {str(device)!r} requested but CUDA is not available on this machine")
    return str(device)


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer-layer index in a tensor name, or None outside the layer stack.

    >>> layer_index("model.layers.3.mlp.up_proj.weight"), layer_index("model.norm.weight")
    (3, None)
    """
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def layer_template(name: str) -> str | None:
    """``name`` with its layer index replaced by ``{}``, or None outside the layer stack.

    >>> layer_template("model.layers.3.mlp.up_proj.weight")
    'model.layers.{}.mlp.up_proj.weight'
    """
    m = _LAYER_RE.search(name)
    return None if m is None else name[: m.start(1)] + "{}" + name[m.end(1) :]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise WorkbenchError(f"{path}: cannot read ({err.strerror or err})") from None
    except ValueError as err:
        raise WorkbenchError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path}: expected a JSON object")
    return data


def _looks_like_hub_id(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", s)) and not s.startswith((".", "/"))


def _download(hub_id: str, revision: str | None, allow_bin: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - optional dependency
        raise WorkbenchError(
            f"{hub_id}: not a local directory and huggingface_hub is not installed (pip install workbench[hub])"
        ) from None
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    if allow_bin:
        patterns.append("*.bin")
    try:
        return Path(snapshot_download(hub_id, revision=revision, allow_patterns=patterns))
    except Exception as err:  # network, auth, unknown repo
        raise WorkbenchError(f"{hub_id}: not a local directory and Hub download failed ({err})") from None


def open_checkpoint(
    path_or_hub_id: str | os.PathLike | Checkpoint,
    *,
    revision: str | None = None,
    allow_bin: bool = False,
) -> Checkpoint:
    """Open a model directory (or a Hub id, when online) for lazy reading.

    Raises :class:`WorkbenchError` naming the file for a missing config, a corrupt or
    truncated safetensors file, or a ``.bin`` checkpoint without ``allow_bin=True``.
    Passing a :class:`Checkpoint` returns it unchanged.
    """
    if isinstance(path_or_hub_id, Checkpoint):
        return path_or_hub_id
    source = str(path_or_hub_id)
    path = Path(path_or_hub_id).expanduser()
    if not path.exists():
        if _looks_like_hub_id(source):
            path = _download(source, revision, allow_bin)
        else:
            raise WorkbenchError(f"{path}: no such model directory")
    if path.is_file():
        raise WorkbenchError(f"{path}: expected a model directory (with config.json), got a file")
    path = path.resolve()
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise WorkbenchError(f"{path}: not a Hugging Face model directory (config.json missing)")
    config = _read_json(cfg_path)

    files: dict[str, Any] = {}
    if (path / SAFE_INDEX).is_file():
        index = _read_json(path / SAFE_INDEX)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WorkbenchError(f"{path / SAFE_INDEX}: missing or empty weight_map")
        shards: dict[str, _SafetensorsFile] = {}
        for name, fname in weight_map.items():
            if fname not in shards:
                fp = path / fname
                if not fp.is_file():
                    raise WorkbenchError(f"{path / SAFE_INDEX}: shard {fname} (tensor {name!r}) is missing")
                shards[fname] = _SafetensorsFile(fp)
            if name not in shards[fname].entries:
                raise WorkbenchError(f"{path / fname}: tensor {name!r} listed in the index is not in the shard")
            files[name] = shards[fname]
    elif (path / SAFE_SINGLE).is_file():
        st = _SafetensorsFile(path / SAFE_SINGLE)
        files = {name: st for name in st.entries}
    else:
        singles = sorted(p for p in path.glob("*.safetensors"))
        bins = [p for p in (path / BIN_SINGLE, path / BIN_INDEX) if p.is_file()]
        if len(singles) == 1 and not bins:
            st = _SafetensorsFile(singles[0])
            files = {name: st for name in st.entries}
        elif bins:
            if not allow_bin:
                raise WorkbenchError(
                    f"{bins[0]}: refusing to load a pickled .bin checkpoint; convert it to safetensors "
                    "or opt in with allow_bin=True (it is then loaded with torch.load(weights_only=True))"
                )
            files = _load_bin(path, bins[0])
        else:
            raise WorkbenchError(f"{path}: no model.safetensors, safetensors index or .bin weights found")
    if not files:
        raise WorkbenchError(f"{path}: checkpoint holds no tensors")
    return Checkpoint(path, config, files, source=source)


def _load_bin(path: Path, first: Path) -> dict[str, Any]:
    if first.name == BIN_INDEX:
        shard_names = sorted(set(_read_json(first).get("weight_map", {}).values()))
    else:
        shard_names = [BIN_SINGLE]
    files: dict[str, Any] = {}
    for fname in shard_names:
        fp = path / fname
        try:
            try:
                state = torch.load(fp, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
                state = torch.load(fp, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WorkbenchError(f"{fp}: cannot load with weights_only=True ({err})") from None
        if not isinstance(state, dict):
            raise WorkbenchError(f"{fp}: expected a state dict")
        holder = dict(state)
        holder["__path__"] = fp
        for name in state:
            files[name] = holder
    return files


# ----------------------------------------------------------------------------------------
# safetensors writing


def _header_for(specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None):
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in specs:
        n = 1
        for s in shape:
            n *= s
        nbytes = n * dtype.itemsize
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
    ):
        self.out_dir = Path(out_dir)
        self.metadata = {"format": "pt", **(metadata or {})}
        shards: list[list[tuple[str, torch.dtype, tuple[int, ...]]]] = [[]]
        size = 0
        for spec in specs:
            n = 1
            for s in spec[2]:
                n *= s
            nbytes = n * spec[1].itemsize
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
        self._fh = None
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
            raise RuntimeError(f"writer expected {want} {dtype} {shape}, got {name} {tensor.dtype} {tuple(tensor.shape)}")
        self.add_part(name, tensor)

    def add_part(self, name: str, part: torch.Tensor) -> None:
        """Write the next consecutive elements of tensor ``name`` (flattened order)."""
        si, (want, dtype, shape) = self._order[self._pos]
        if name != want or part.dtype != dtype:
            raise RuntimeError(f"writer expected {want} {dtype}, got {name} {part.dtype}")
        n = 1
        for s in shape:
            n *= s
        expected = n * dtype.itemsize
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


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
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


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer (and generation config) files present in ``src`` into ``dst``."""
    copied = []
    for name in TOKENIZER_FILES:
        p = Path(src) / name
        if p.is_file():
            shutil.copyfile(p, Path(dst) / name)
            copied.append(name)
    return copied


def save_state_dict(
    out_dir: str | os.PathLike,
    state: Mapping[str, torch.Tensor],
    config: dict,
    *,
    tokenizer_from: str | os.PathLike | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 5 * 1024**3,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write a full HF model directory (config, safetensors, tokenizer files) atomically.

    A tied ``lm_head.weight`` is dropped when ``config["tie_word_embeddings"]`` is true.
    """
    out = Path(out_dir)
    drop = {LM_HEAD} if config.get("tie_word_embeddings") else set()
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        specs = [(n, t.dtype, tuple(t.shape)) for n, t in state.items() if n not in drop]
        w = SafetensorsWriter(tmp, specs, max_shard_bytes=max_shard_bytes)
        for n, _, _ in specs:
            w.add(n, state[n])
        w.close()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer_from is not None:
            copy_tokenizer_files(Path(tokenizer_from), tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out


# ----------------------------------------------------------------------------------------
# transformers bridges (imported lazily: the merge path never needs transformers)


def load_model(
    path_or_checkpoint: str | os.PathLike | Checkpoint,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> "PreTrainedModel":
    """Load a causal LM from a model directory (or an opened Checkpoint), in eval mode."""
    ck = open_checkpoint(path_or_checkpoint)
    if not ck.path.joinpath(SAFE_SINGLE).exists() and not ck.path.joinpath(SAFE_INDEX).exists():
        state = {n: ck.get(n) for n in ck.names()}
        return model_from_state_dict(ck, state, device=device).to(dtype)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(ck.path), dtype=dtype)
    except Exception as err:
        raise WorkbenchError(f"{ck.path}: transformers cannot load this model ({err})") from None
    return model.to(device).eval()


def load_tokenizer(path: str | os.PathLike | Checkpoint) -> "PreTrainedTokenizerBase":
    """Load the tokenizer stored in a model directory (WorkbenchError when there is none)."""
    p = path.path if isinstance(path, Checkpoint) else Path(path)
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        raise WorkbenchError(f"{p}: no tokenizer files (tokenizer.json / tokenizer.model / vocab.json)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(p))
    except Exception as err:
        raise WorkbenchError(f"{p}: cannot load tokenizer ({err})") from None


def _config_object(config_source: "Checkpoint | dict"):
    from transformers import AutoConfig

    cfg = dict(config_source.config if isinstance(config_source, Checkpoint) else config_source)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise WorkbenchError("config has no model_type")
    for k in ("transformers_version", "architectures", "_name_or_path"):
        cfg.pop(k, None)
    return AutoConfig.for_model(model_type, **cfg)


def model_from_state_dict(
    config_source: "Checkpoint | dict",
    state: Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
) -> "PreTrainedModel":
    """Build a causal LM from a config and a state dict (e.g. from ``merge_in_memory``).

    The model takes the dtype of the state's tensors; tied ``lm_head.weight`` is re-tied.
    """
    from transformers import AutoModelForCausalLM

    config = _config_object(config_source)
    first = next(iter(state.values()))
    with _no_init():
        model = AutoModelForCausalLM.from_config(config, dtype=first.dtype)
    sd = dict(state)
    if getattr(config, "tie_word_embeddings", False):
        sd.pop(LM_HEAD, None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (m == LM_HEAD and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise WorkbenchError(
            f"state dict does not fit the {config.model_type} config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.to(device).eval()


@contextlib.contextmanager
def _no_init():
    ctx = None
    for mod, attr in (("transformers.initialization", "no_init_weights"), ("transformers.modeling_utils", "no_init_weights")):
        try:
            ctx = getattr(__import__(mod, fromlist=[attr]), attr)
            break
        except (ImportError, AttributeError):
            continue
    if ctx is None:  # pragma: no cover
        yield
    else:
        with ctx():
            yield


# ----------------------------------------------------------------------------------------
# small random models (tests, benchmarks, examples): written directly, no transformers needed


def llama_config(
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 256,
    intermediate_size: int | None = None,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    tie: bool = False,
    dtype: str = "float32",
    max_position_embeddings: int = 256,
) -> dict:
    """A Llama ``config.json`` dict for :func:`write_random_llama`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads or num_heads,
        "head_dim": hidden_size // num_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tie,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "dtype": dtype,
    }


def llama_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a ``LlamaForCausalLM`` with this config, in HF order."""
    h, inter, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (inter, h)),
            (p + "mlp.up_proj.weight", (inter, h)),
            (p + "mlp.down_proj.weight", (h, inter)),
        ]
    out.append(("model.norm.weight", (h,)))
    if not config.get("tie_word_embeddings"):
        out.append((LM_HEAD, (v, h)))
    return out


def write_random_llama(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    like: str | os.PathLike | None = None,
    noise: float = 0.0,
    tokenizer: bool = True,
    max_shard_bytes: int = 5 * 1024**3,
    overwrite: bool = False,
    **config_kwargs: Any,
) -> Path:
    """Write a random Llama model directory (config, safetensors, tokenizer) that transformers loads.

    Weights are N(0, 0.02), norms 1 + N(0, 0.02). With ``like=DIR`` the tensors are those of
    ``DIR`` plus ``noise`` * N(0, 1) (a "fine-tune" of it). Tensors are generated and written
    one at a time, so large models need little memory.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> ck = open_checkpoint(write_random_llama(d / "m", hidden_size=16, num_layers=1, vocab_size=32))
    >>> ck.shape("model.layers.0.mlp.up_proj.weight")
    (32, 16)
    """
    g = torch.Generator().manual_seed(int(seed))
    src = open_checkpoint(like) if like is not None else None
    config = dict(src.config) if src is not None else llama_config(**config_kwargs)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        str(config.get("dtype") or config.get("torch_dtype") or "float32")
    ]
    shapes = llama_shapes(config)
    out = Path(out_dir)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        w = SafetensorsWriter(tmp, [(n, dtype, s) for n, s in shapes], max_shard_bytes=max_shard_bytes)
        for name, shape in shapes:
            if src is not None:
                x = src.get(name).to(torch.float32)
                x = x + noise * torch.randn(shape, generator=g)
            elif name.endswith("norm.weight"):
                x = 1.0 + 0.02 * torch.randn(shape, generator=g)
            else:
                x = 0.02 * torch.randn(shape, generator=g)
            w.add(name, x.to(dtype))
        w.close()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer:
            if src is not None and (src.path / "tokenizer.json").is_file():
                copy_tokenizer_files(src.path, tmp)
            else:
                _write_tiny_tokenizer(tmp, config["vocab_size"])
    return out


def _write_tiny_tokenizer(out: Path, vocab_size: int) -> None:
    """A byte-level word-piece-free tokenizer: ids 0-2 specials, then single characters."""
    chars = [chr(c) for c in range(32, 127)] + [chr(c) for c in range(161, 161 + max(0, vocab_size - 98))]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in chars:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(ch, len(vocab))
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True}
            for c, i in (("<pad>", 0), ("<s>", 1), ("</s>", 2))
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": ""}, "behavior": "Isolated", "invert": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "</s>"},
    }
    (out / "tokenizer.json").write_text(json.dumps(tok))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                    "pad_token": "<pad>", "unk_token": "</s>", "model_max_length": 256})
    )
