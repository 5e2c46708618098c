"""Open and write Hugging Face checkpoint directories, lazily and atomically.

Reading: a model directory (``config.json`` plus ``model.safetensors`` or a sharded
``model.safetensors.index.json``) or a Hub id. Tensors are memory-mapped and read one at a
time, so nothing ever needs a whole model in RAM. A tied ``lm_head.weight`` that is absent
from the files is exposed as a virtual alias of the input embeddings. ``.bin`` pickles are
refused unless ``allow_bin=True``, and then loaded with ``torch.load(weights_only=True)``.

Writing: :func:`save_state_dict` writes a whole model directory through
:func:`workbench.io.atomic.atomic_output_dir` (it appears all at once or not at all) and
:class:`workbench.io.safetensors.SafetensorsWriter`. The transformers bridges
(:func:`load_model`, :func:`load_tokenizer`, :func:`model_from_state_dict`) import
transformers lazily: the merge path never needs it.

>>> import tempfile, torch
>>> from pathlib import Path
>>> from workbench.io.atomic import atomic_output_dir, write_text_atomic
>>> from workbench.io.safetensors import write_safetensors
>>> d = Path(tempfile.mkdtemp()) / "m"
>>> with atomic_output_dir(d) as tmp:
...     _ = write_safetensors(tmp / "model.safetensors", {"w": torch.ones(2, 3)})
...     _ = write_text_atomic(tmp / "config.json", '{"model_type": "llama"}')
>>> ck = open_checkpoint(d)
>>> ck.names(), ck.shape("w"), ck.get("w").sum().item()
(['w'], (2, 3), 6.0)
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workbench.errors import WorkbenchError
from workbench.fingerprints import tensor_bytes, tensor_digest
from workbench.hub import download_snapshot, looks_like_hub_id, split_revision
from workbench.io.atomic import atomic_output_dir
from workbench.io.safetensors import SAFE_INDEX, SAFE_SINGLE, SafetensorsFile, SafetensorsWriter
from workbench.naming import LM_HEAD, architecture, layer_index

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "Checkpoint",
    "copy_tokenizer_files",
    "load_model",
    "load_tokenizer",
    "model_from_state_dict",
    "open_checkpoint",
    "save_state_dict",
    "stat_key",
]

BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
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


# ----------------------------------------------------------------------------------------
# reading model directories


@functools.cache
def _default_tie(model_type: str) -> bool:
    """transformers' default ``tie_word_embeddings`` for ``model_type`` (True when unknown:
    without an ``lm_head.weight`` in the files, the embeddings are the only head there is)."""
    try:
        from transformers import AutoConfig

        return bool(getattr(AutoConfig.for_model(model_type), "tie_word_embeddings", True))
    except (ImportError, ValueError, KeyError):  # no transformers, or a model type it does not know
        return True


def _ties_embeddings(config: Mapping[str, Any]) -> bool:
    """The config's ``tie_word_embeddings``, or its config class default when the key is
    absent (defaults differ: GPT-2 and Gemma tie, Llama and Qwen2 do not)."""
    if "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"])
    return _default_tie(str(config.get("model_type") or ""))


class Checkpoint:
    """A Hugging Face model directory opened read-only, tensors read lazily.

    Use :func:`open_checkpoint` to make one. ``names()`` lists the tensors (with a virtual
    ``lm_head.weight`` when the embeddings are tied), ``get(name)`` returns one tensor.
    """

    def __init__(self, path: Path, config: dict, files: dict[str, Any], *, source: str | None = None):
        self.path = path
        self.config = config
        self.source = source or str(path)
        self._files = files  # tensor name -> SafetensorsFile or a dict from a .bin
        self._fingerprint: str | None = None
        # a missing lm_head.weight aliases the architecture's input embeddings when the config ties them
        embed = next((e for e in architecture(config).embed_candidates if e in files), None)
        self.tied: bool = LM_HEAD not in files and embed is not None and _ties_embeddings(config)
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
        return src.path if isinstance(src, SafetensorsFile) else src["__path__"]

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name``, from the header (nothing is read)."""
        src = self._files[real := self._resolve(name)]
        if isinstance(src, SafetensorsFile):
            return src.entries[real][1]
        return tuple(src[real].shape)

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of tensor ``name``."""
        src = self._files[real := self._resolve(name)]
        if isinstance(src, SafetensorsFile):
            return src.entries[real][0]
        return src[real].dtype

    def read_into(self, name: str, out: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Copy elements ``start .. start + out.numel()`` of the flattened tensor ``name`` into
        the contiguous CPU tensor ``out`` (any dtype) with plain file reads: no memory map,
        so reading a model does not grow the process's resident memory."""
        src = self._files[real := self._resolve(name)]
        if start < 0 or start + out.numel() > self.numel(name):
            raise ValueError(f"read_into: {name} has {self.numel(name)} elements, asked {start}+{out.numel()}")
        if isinstance(src, SafetensorsFile):
            return src.read_into(real, out, start)
        out.copy_(src[real].reshape(-1)[start : start + out.numel()].reshape(out.shape))
        return out

    def numel(self, name: str) -> int:
        """The element count of tensor ``name``."""
        return math.prod(self.shape(name))

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor (a view of the memory map on CPU; a copy on another device)."""
        src = self._files[real := self._resolve(name)]
        t = src.get(real) if isinstance(src, SafetensorsFile) else src[real]
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
        return src.raw_bytes(name) if isinstance(src, SafetensorsFile) else tensor_bytes(src[name])

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
    files = sorted({str(src.path if isinstance(src, SafetensorsFile) else src["__path__"]) for src in sources})
    return tuple((f, st.st_size, st.st_mtime_ns) for f in files for st in (os.stat(f),))


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


def open_checkpoint(
    path_or_hub_id: str | os.PathLike | Checkpoint,
    *,
    revision: str | None = None,
    allow_bin: bool = False,
) -> Checkpoint:
    """Open a model directory, or a Hub id (``org/name``, ``org/name@revision``), for lazy reading.

    A Hub id is read from the Hugging Face cache (offline with ``HF_HUB_OFFLINE=1``) or
    downloaded into it: see :func:`workbench.hub.download_snapshot`. ``revision`` is the same
    as an ``@revision`` suffix (giving two different ones is an error). A local directory of
    that name wins over the Hub.

    Raises :class:`WorkbenchError` naming the file for a missing config, a corrupt or
    truncated safetensors file, or a ``.bin`` checkpoint without ``allow_bin=True``; naming
    the id and the cache directory for a Hub model that is not cached while offline.
    Passing a :class:`Checkpoint` returns it unchanged.
    """
    if isinstance(path_or_hub_id, Checkpoint):
        return path_or_hub_id
    source = str(path_or_hub_id)
    path = Path(path_or_hub_id).expanduser()
    if not path.exists():
        if not _is_hub_ref(source):
            raise WorkbenchError(f"{path}: no such model directory")
        path = _hub_snapshot(source, revision, allow_bin)
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
        shards: dict[str, SafetensorsFile] = {}
        for name, fname in weight_map.items():
            if fname not in shards:
                fp = path / fname
                if not fp.is_file():
                    raise WorkbenchError(f"{path / SAFE_INDEX}: shard {fname} (tensor {name!r}) is missing")
                shards[fname] = SafetensorsFile(fp)
            if name not in shards[fname].entries:
                raise WorkbenchError(f"{path / fname}: tensor {name!r} listed in the index is not in the shard")
            files[name] = shards[fname]
    elif (path / SAFE_SINGLE).is_file():
        st = SafetensorsFile(path / SAFE_SINGLE)
        files = {name: st for name in st.entries}
    else:
        singles = sorted(p for p in path.glob("*.safetensors"))
        bins = [p for p in (path / BIN_SINGLE, path / BIN_INDEX) if p.is_file()]
        if len(singles) == 1 and not bins:
            st = SafetensorsFile(singles[0])
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


def _is_hub_ref(source: str) -> bool:
    return looks_like_hub_id(split_revision(source)[0])


def _hub_snapshot(source: str, revision: str | None, allow_bin: bool) -> Path:
    """The cached (or downloaded) snapshot of Hub reference ``source`` (``org/name[@revision]``)."""
    hub_id, pinned = split_revision(source)
    if pinned is not None and revision is not None and pinned != revision:
        raise WorkbenchError(f"{source}: revision given twice ({pinned!r} in the id, {revision!r} as revision=)")
    return download_snapshot(hub_id, pinned or revision, allow_bin=allow_bin)


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
# writing model directories


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
    config_source: "Checkpoint | dict", state: Mapping[str, torch.Tensor], *, device: str | torch.device = "cpu"
) -> "PreTrainedModel":
    """Build a model from a config and a state dict in checkpoint layout (e.g. from ``merge_in_memory``).

    The tensors go through transformers' own checkpoint conversion, as ``from_pretrained``
    does for files (per-expert MoE tensors fused, NeoX's ``embed_out`` renamed); a causal LM
    for decoders, the base model (``AutoModel``) for encoders (naming's ``causal=False``).
    The model takes the dtype of the state's tensors; tied ``lm_head.weight`` is re-tied.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    config = _config_object(config_source)
    causal = architecture(config.model_type).causal
    try:
        cls = (MODEL_FOR_CAUSAL_LM_MAPPING if causal else MODEL_MAPPING)[type(config)]
    except KeyError:
        kind = "causal LM" if causal else "model"
        raise WorkbenchError(f"transformers has no {kind} class for model_type {config.model_type!r}") from None
    tied = bool(getattr(config, "tie_word_embeddings", False))
    sd = {n: t for n, t in state.items() if not (tied and n == LM_HEAD)}
    first = next(iter(sd.values()))
    model, info = cls.from_pretrained(None, config=config, state_dict=sd, dtype=first.dtype, output_loading_info=True)
    missing = [m for m in sorted(info["missing_keys"]) if not (tied and m == LM_HEAD)]
    unexpected, mismatched = sorted(info["unexpected_keys"]), list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise WorkbenchError(
            f"state dict does not fit the {config.model_type} config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            + (f", mismatched shapes {mismatched[:5]}" if mismatched else "")
        )
    return model.to(device).eval()
