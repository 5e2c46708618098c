"""Aligning checkpoints: find the alignment of OTHER onto REFERENCE, write OTHER in REFERENCE's
basis as a normal Hugging Face checkpoint, or hand the aligned checkpoint to a merge.

:func:`find_alignment` checks everything that can be wrong (architectures, shapes, method,
data) before any work; :func:`align_checkpoints` writes the aligned model atomically, with
``workbench_align.json`` (the method, its settings, both models' fingerprints, the similarity
before and after, every permutation); :func:`aligned_checkpoint` returns the aligned model as
an opened :class:`~workbench.checkpoints.Checkpoint`, computed once and kept in a
content-addressed cache, for recipes that ask for alignment.

>>> canonical_method("weight"), canonical_method("activation_matching")
('weight_matching', 'activation_matching')
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.align.symmetry import AlignSpec, check_same_model, spec_for
from workbench.align.transform import Alignment, align_tensor, identity_alignment
from workbench.align.weights import alignment_similarity, weight_matching
from workbench.checkpoints import Checkpoint, open_checkpoint, save_state_dict
from workbench.errors import WorkbenchError
from workbench.io.atomic import check_output_dir

__all__ = [
    "ALIGN_FILE",
    "DEFAULTS",
    "METHODS",
    "AlignResult",
    "CheckpointTensors",
    "align_checkpoints",
    "align_options",
    "aligned_checkpoint",
    "canonical_method",
    "find_alignment",
    "read_alignment",
    "write_aligned",
]

ALIGN_FILE = "workbench_align.json"
ALIGN_FORMAT = "workbench-align/1"
#: method name -> what it needs; the short CLI spellings map onto these
METHODS = {"weight_matching": "weights only", "activation_matching": "weights and text (data=FILE or 'corpus')"}
_ALIASES = {"weight": "weight_matching", "activation": "activation_matching"}
#: settings a caller may pass, with their defaults (recipes' ``align:`` mapping takes the same keys)
DEFAULTS: dict[str, Any] = {
    "data": None,
    "n_sequences": 256,
    "seq_len": 128,
    "seed": 0,
    "batch_size": 16,
    "rotations": None,  # None: the method's default, ROTATIONS_DEFAULT
    "max_rounds": 20,
}
#: whether each method rotates q/k pairs unless told: measured on the demo family's independent
#: runs (benchmarks/RESULTS.md), pair rotations found from activations lower the LERP barrier,
#: those found from weights raise it (they raise weight similarity, not the midpoint's fit)
ROTATIONS_DEFAULT = {"weight_matching": False, "activation_matching": True}
#: the cache of aligned checkpoints (:func:`aligned_checkpoint`) when no ``cache_dir`` is given
DEFAULT_CACHE = Path("data") / "cache" / "aligned"


def canonical_method(name: str) -> str:
    """``weight`` / ``weight_matching`` -> ``weight_matching``; ``activation`` likewise; else an error."""
    method = _ALIASES.get(str(name), str(name))
    if method not in METHODS:
        raise WorkbenchError(f"unknown alignment method {name!r} (known: {', '.join(METHODS)}, or weight / activation)")
    return method


def align_options(options: Mapping[str, Any] | None, source: str = "align") -> dict[str, Any]:
    """Validated keyword arguments for :func:`aligned_checkpoint` from a recipe's ``align:`` mapping.

    >>> align_options({"method": "weight"})["method"]
    'weight_matching'
    """
    opts = dict(options or {})
    unknown = sorted(set(opts) - {"method", *DEFAULTS})
    if unknown:
        raise WorkbenchError(f"{source}: unknown key(s) {unknown} (known: method, {', '.join(DEFAULTS)})")
    if "method" not in opts:
        raise WorkbenchError(f"{source}: 'method' is required ({', '.join(METHODS)})")
    opts["method"] = canonical_method(opts["method"])
    for key in ("n_sequences", "seq_len", "seed", "batch_size", "max_rounds"):
        if key in opts and (isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 0):
            raise WorkbenchError(f"{source}: {key} must be a non-negative integer, got {opts[key]!r}")
    if opts.get("rotations") is not None and not isinstance(opts["rotations"], bool):
        raise WorkbenchError(f"{source}: rotations must be true or false, got {opts['rotations']!r}")
    return opts


class CheckpointTensors(Mapping):
    """A checkpoint as a read-only mapping name -> tensor, read lazily (for the matching code)."""

    def __init__(self, ck: Checkpoint):
        self.ck = ck

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.ck.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ck.names())

    def __len__(self) -> int:
        return len(self.ck.names())


class _AlignedTensors(CheckpointTensors):
    """``other``'s tensors moved into the reference's basis as they are read."""

    def __init__(self, ck: Checkpoint, spec: AlignSpec, alignment: Alignment):
        super().__init__(ck)
        self.spec, self.alignment = spec, alignment

    def __getitem__(self, name: str) -> torch.Tensor:
        return align_tensor(name, self.ck.get(name), self.spec, self.alignment).contiguous()


@dataclass
class AlignResult:
    """An alignment of ``other`` onto ``reference`` with what it was found from and how well it fits."""

    alignment: Alignment
    spec: AlignSpec
    method: str
    settings: dict[str, Any]
    reference: Checkpoint
    other: Checkpoint
    similarity_before: float
    similarity_after: float
    history: list[float] = field(default_factory=list)

    def sidecar(self) -> dict[str, Any]:
        """The ``workbench_align.json`` record."""
        return {
            "format": ALIGN_FORMAT,
            "method": self.method,
            "settings": {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in self.settings.items()},
            "reference": {"source": self.reference.source, "fingerprint": self.reference.fingerprint()},
            "other": {"source": self.other.source, "fingerprint": self.other.fingerprint()},
            "similarity_before": self.similarity_before,
            "similarity_after": self.similarity_after,
            "rounds": self.history,
            "moved": not self.alignment.is_identity(),
            "alignment": self.alignment.to_dict(),
        }


def _open_pair(reference: Any, other: Any) -> tuple[Checkpoint, Checkpoint, AlignSpec]:
    ref, oth = open_checkpoint(reference), open_checkpoint(other)
    specs = [
        spec_for(ck.config, {n: ck.shape(n) for n in ck.names()}, tied=ck.tied, source=str(ck.path))
        for ck in (ref, oth)
    ]
    check_same_model(*specs, str(ref.path), str(oth.path))
    return ref, oth, specs[0]


def _settings(method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise WorkbenchError(f"alignment: unknown setting(s) {unknown} (known: {', '.join(DEFAULTS)})")
    out = {**DEFAULTS, **settings}
    if out["rotations"] is None:
        out["rotations"] = ROTATIONS_DEFAULT[method]
    if method == "activation_matching" and not out["data"]:
        raise WorkbenchError(
            "activation matching needs text to run the models on: pass --data FILE (or data='corpus' for "
            "the data directory's corpus), or use --method weight, which needs no data"
        )
    if method == "weight_matching":
        if out["data"]:
            raise WorkbenchError(
                f"weight matching reads no data, but data={str(out['data'])!r} was given: "
                "use --method activation to align on text"
            )
        for key in ("data", "n_sequences", "seq_len", "seed", "batch_size"):
            out.pop(key)
    else:
        out.pop("max_rounds")
    return out


def find_alignment(
    reference: str | os.PathLike | Checkpoint,
    other: str | os.PathLike | Checkpoint,
    *,
    method: str = "weight_matching",
    device: str | None = "cpu",
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
    **settings: Any,
) -> AlignResult:
    """The alignment of ``other`` onto ``reference`` (in memory; nothing is written).

    ``method``: ``weight_matching`` (weights only) or ``activation_matching`` (needs ``data``:
    text files, or ``"corpus"`` for the data directory's corpus, tokenized with the reference's
    tokenizer). ``settings``: see :data:`DEFAULTS`. Models of different architectures or shapes,
    an unsupported architecture, an unknown method or activation matching without data are one
    WorkbenchError each, raised before any work.
    """
    from workbench.devices import resolve_device

    method = canonical_method(method)
    opts = _settings(method, settings)
    ref, oth, spec = _open_pair(reference, other)
    device = resolve_device(device)
    ref_t, oth_t = CheckpointTensors(ref), CheckpointTensors(oth)
    if method == "weight_matching":
        al, history = weight_matching(
            ref_t, oth_t, spec, max_rounds=opts["max_rounds"], rotations=opts["rotations"], progress=progress
        )
    else:
        al, n = _activation(ref, oth, spec, opts, device, data_dir, progress)
        opts["sequences_used"] = n
        history = []
    before = alignment_similarity(ref_t, oth_t, spec, identity_alignment(spec))
    after = history[-1] if history else alignment_similarity(ref_t, oth_t, spec, al)
    return AlignResult(al, spec, method, opts, ref, oth, before, after, history)


def _activation(ref: Checkpoint, oth: Checkpoint, spec: AlignSpec, opts: dict, device: str, data_dir, progress: bool):
    from workbench.align.activations import activation_matching, alignment_sequences
    from workbench.checkpoints import load_model, load_tokenizer

    tok = load_tokenizer(ref)
    seqs = alignment_sequences(
        tok,
        opts["data"],
        n_sequences=opts["n_sequences"],
        seq_len=opts["seq_len"],
        seed=opts["seed"],
        data_dir=data_dir,
    )
    ma, mb = load_model(ref, device=device), load_model(oth, device=device)
    al = activation_matching(
        ma, mb, spec, seqs, batch_size=opts["batch_size"], rotations=opts["rotations"], progress=progress
    )
    return al, int(seqs.shape[0])


def _refuse_inputs(out: Path, *cks: Checkpoint) -> None:
    for ck in cks:
        if out == ck.path or ck.path in out.parents or out in ck.path.parents:
            raise WorkbenchError(f"output directory {out} overlaps input model {ck.path} (is, holds or sits inside it)")


def write_aligned(result: AlignResult, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``result.other`` in the reference's basis to ``out_dir`` (atomically): its config and
    tokenizer files, the aligned tensors (same dtypes), and :data:`ALIGN_FILE`."""
    out = check_output_dir(out_dir, overwrite=overwrite)
    _refuse_inputs(out.resolve(), result.reference, result.other)
    record = result.sidecar()
    # the header readable, the permutations (long integer lists) one compact line
    compact = json.dumps(record.pop("alignment"), separators=(",", ":"))
    text = json.dumps({**record, "alignment": "@"}, indent=1).replace('"alignment": "@"', f'"alignment": {compact}')
    text += "\n"
    return save_state_dict(
        out,
        _AlignedTensors(result.other, result.spec, result.alignment),
        dict(result.other.config),
        tokenizer_from=result.other.path,
        overwrite=overwrite,
        extra_files={ALIGN_FILE: text},
    )


def align_checkpoints(
    reference: str | os.PathLike | Checkpoint,
    other: str | os.PathLike | Checkpoint,
    out_dir: str | os.PathLike,
    *,
    method: str = "weight_matching",
    overwrite: bool = False,
    device: str | None = "cpu",
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
    **settings: Any,
) -> Path:
    """``workbench align``: find the alignment (:func:`find_alignment`) and write the aligned
    model to ``out_dir`` (:func:`write_aligned`). The output directory is checked first, so a
    run that would be refused at the end is refused before any work."""
    out = check_output_dir(out_dir, overwrite=overwrite)
    ref, oth = open_checkpoint(reference), open_checkpoint(other)
    _refuse_inputs(out.resolve(), ref, oth)
    result = find_alignment(ref, oth, method=method, device=device, data_dir=data_dir, progress=progress, **settings)
    return write_aligned(result, out, overwrite=overwrite)


def read_alignment(path: str | os.PathLike) -> tuple[Alignment, dict[str, Any]]:
    """The alignment and the record stored with an aligned checkpoint (its :data:`ALIGN_FILE`)."""
    ck = open_checkpoint(path)
    f = ck.path / ALIGN_FILE
    if not f.is_file():
        raise WorkbenchError(f"{ck.path}: no {ALIGN_FILE}: not an aligned checkpoint")
    try:
        record = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as err:
        raise WorkbenchError(f"{f}: not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != ALIGN_FORMAT:
        raise WorkbenchError(f"{f}: not a workbench alignment record ({ALIGN_FORMAT} expected)")
    spec = spec_for(ck.config, {n: ck.shape(n) for n in ck.names()}, tied=ck.tied, source=str(ck.path))
    return Alignment.from_dict(record.get("alignment") or {}, spec, str(f)), record


def aligned_checkpoint(
    reference: str | os.PathLike | Checkpoint,
    other: str | os.PathLike | Checkpoint,
    *,
    method: str = "weight_matching",
    cache_dir: str | os.PathLike | None = None,
    device: str | None = "cpu",
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
    **settings: Any,
) -> Checkpoint:
    """``other`` in ``reference``'s basis, as an opened checkpoint, for merges that align first.

    Computed once per (reference contents, other contents, method, settings, data) and kept
    under ``cache_dir`` (default ``$WORKBENCH_ALIGN_CACHE``, else ``data/cache/aligned``) as a
    normal checkpoint with its :data:`ALIGN_FILE`; later calls, in any process, open it at
    once. Being real files with their own fingerprint, it goes through the merge engines and the
    results cache like any other checkpoint (and never shares a cache entry with the unaligned
    model). Errors as :func:`find_alignment`, raised before anything is written.
    """
    method = canonical_method(method)
    opts = _settings(method, settings)
    ref, oth, _ = _open_pair(reference, other)
    ident = {"format": ALIGN_FORMAT, "reference": ref.fingerprint(), "other": oth.fingerprint(), "method": method}
    ident["settings"] = {k: v for k, v in opts.items() if k != "data"}
    if opts.get("data"):
        ident["data"] = _data_digest(opts["data"], data_dir)
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    root = Path(cache_dir or os.environ.get("WORKBENCH_ALIGN_CACHE") or DEFAULT_CACHE)
    out = root / key[:2] / key
    if not (out / ALIGN_FILE).is_file():
        result = find_alignment(ref, oth, method=method, device=device, data_dir=data_dir, progress=progress, **opts)
        try:
            write_aligned(result, out)
        except WorkbenchError:
            if not (out / ALIGN_FILE).is_file():  # not a concurrent writer that finished first
                raise
    return open_checkpoint(out)


def _data_digest(data: Any, data_dir: str | os.PathLike | None) -> str:
    """sha256 over the contents of the text files ``data`` names (the alignment depends on them)."""
    from workbench.align.activations import data_files
    from workbench.factory.corpus import file_digest

    return hashlib.sha256("".join(file_digest(f) for f in data_files(data, data_dir)).encode()).hexdigest()
