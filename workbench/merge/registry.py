"""The merge-method registry: every method declared once, here.

A :class:`MethodSpec` says what a method takes (its :class:`Parameter` s with scope, type,
default and bounds; whether a base model is required, optional or ignored; how many inputs),
which kernel computes it (a function of :mod:`workbench.merge.methods`, imported on first
use, so reading the registry needs no torch), whether the batched Gram fast path applies,
and which roles other modules look it up by. Recipe validation, error messages, ``workbench
merge --help``, sweep axes, the explorer's method dropdown and the claim check's baselines
read this table; nothing else lists methods. Adding a method = one module in
:mod:`workbench.merge.methods` + one entry in :data:`METHODS`.

>>> method_spec("ties").parameter("density").default, method_spec("ties").base
(1.0, 'required')
>>> [m.name for m in methods_with(INTERPOLATION)]
['lerp', 'slerp', 'lerp_norm_restore']
>>> method_with(SOUP).name, method_with(NORM_RESTORE).name
('linear', 'lerp_norm_restore')
>>> len([m for m in METHODS.values() if m.mergekit])  # mergekit 0.1.5 registers 20 methods
20
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from workbench.errors import WorkbenchError

__all__ = [
    "CURVE",
    "DEFAULT",
    "INTERPOLATION",
    "METHODS",
    "NORM_RESTORE",
    "REQUIRED",
    "SOUP",
    "MethodSpec",
    "Parameter",
    "method_help",
    "method_names",
    "method_spec",
    "method_with",
    "methods_with",
    "parameter_names",
]

#: Role: interpolates between exactly two models with one shared ``t``; the base is t = 0.
INTERPOLATION = "interpolation"
#: Role: drawn by default on the claim check's interpolation curve.
CURVE = "curve"
#: Role: the uniform model soup (the claim check's first baseline).
SOUP = "soup"
#: Role: the norm-restore control (LERP at SLERP's norm): isolates the spherical path.
NORM_RESTORE = "norm_restore"
#: Role: the method sweeps and the explorer start from when none is named.
DEFAULT = "default"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a parameter the recipe must give.
REQUIRED: Any = _Required()

Scope = Literal["shared", "input", "non_base"]


@dataclass(frozen=True)
class Parameter:
    """One parameter of a method.

    ``scope``: ``shared`` (one value per tensor), ``input`` (one per input model, the base
    included) or ``non_base`` (one per input other than the base). ``bounds`` is the
    meaningful range (None: open on that side), what sweeps and searches explore;
    ``enforce`` says what a value outside it does: ``"none"`` (allowed, as in mergekit),
    ``"extrapolate"`` (refused unless extrapolation is allowed) or ``"error"``.
    ``mergekit=False`` marks a workbench extension (mergekit ignores the name).
    ``nullable``: None is a value of its own (e.g. passthrough's ``scale``: no scaling).
    """

    name: str
    type: type
    scope: Scope = "shared"
    default: Any = REQUIRED
    bounds: tuple[float | None, float | None] = (None, None)
    enforce: Literal["none", "extrapolate", "error"] = "none"
    doc: str = ""
    mergekit: bool = True
    nullable: bool = False

    @property
    def required(self) -> bool:
        """Whether a recipe must give this parameter (it has no default)."""
        return self.default is REQUIRED

    def in_bounds(self, value: Any) -> bool:
        """Whether ``value`` lies within :attr:`bounds` (non-numbers always do).

        >>> Parameter("t", float, bounds=(0.0, 1.0)).in_bounds(1.5)
        False
        """
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        lo, hi = self.bounds
        return not (math.isnan(value) or (lo is not None and value < lo) or (hi is not None and value > hi))

    def check(self, value: Any, where: str, *, allow_extrapolation: bool = False) -> None:
        """Raise the one WorkbenchError for a value outside the bounds this parameter enforces."""
        if self.enforce == "none" or self.in_bounds(value):
            return
        if self.enforce == "extrapolate":
            if allow_extrapolation:
                return
            raise WorkbenchError(
                f"recipe: {self.name}={value} for {where} is outside {_range(self.bounds)} "
                "(pass --allow-extrapolation / allow_extrapolation=True to extrapolate)"
            )
        raise WorkbenchError(f"recipe: {self.name}={value} for {where} must lie in {_range(self.bounds)}")


def _range(bounds: tuple[float | None, float | None]) -> str:
    lo, hi = bounds
    return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, fn = ref.partition(":")
    return getattr(importlib.import_module(f"workbench.merge.methods.{module}"), fn)


@dataclass(frozen=True)
class MethodSpec:
    """One merge method, as the registry lists it.

    ``kernel`` (``"module:function"`` in :mod:`workbench.merge.methods`) computes one output
    tensor from a :class:`~workbench.merge.methods.MergeCall`. ``gram``, when set, names the
    function giving the batched fast path's coefficients (the result is a linear combination
    of the inputs whose coefficients depend only on their Gram matrix). ``validate``, when
    set, names a check of one tensor's resolved parameters run at planning time
    (``(shared, per_input, models) -> reason or None``). ``base``: the base
    model is ``required``, ``optional`` (used when given) or ``ignored`` (a base is just one
    more input). Input counts include the base. ``random``: the kernel draws random numbers
    (seeded; see :mod:`workbench.merge.execute`). ``mergekit``: mergekit 0.1.5 has this method
    with the same name and semantics.
    """

    name: str
    summary: str
    kernel: str
    parameters: tuple[Parameter, ...] = ()
    base: Literal["required", "optional", "ignored"] = "ignored"
    min_inputs: int = 1
    max_inputs: int | None = None
    min_non_base: int | None = None
    max_non_base: int | None = None
    gram: str | None = None
    validate: str | None = None
    roles: frozenset[str] = frozenset()
    mergekit: bool = True
    random: bool = False
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def parameter(self, name: str) -> Parameter:
        """The parameter called ``name`` (WorkbenchError naming the method's parameters if none)."""
        for p in self.parameters:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.parameters) or "none"
        raise WorkbenchError(f"merge method {self.name} has no parameter {name!r} (its parameters: {known})")

    def scoped(self, *scopes: Scope) -> tuple[Parameter, ...]:
        """The parameters of the given scopes, in declaration order."""
        return tuple(p for p in self.parameters if p.scope in scopes)

    def _fn(self, key: str) -> Callable[..., Any] | None:
        ref = getattr(self, key)
        if ref is None:
            return None
        if key not in self._cache:
            self._cache[key] = _resolve(ref)
        return self._cache[key]

    @property
    def kernel_fn(self) -> Callable[..., Any]:
        """The kernel function (imported on first use)."""
        return self._fn("kernel")

    @property
    def gram_fn(self) -> Callable[..., Any] | None:
        """The Gram fast path's coefficient function, or None without a fast path."""
        return self._fn("gram")

    @property
    def validate_fn(self) -> Callable[..., Any] | None:
        """The planning-time parameter check, or None."""
        return self._fn("validate")

    def contract(self) -> str:
        """The input contract in words, e.g. ``"a base_model and exactly 1 other model"``."""
        base = {"required": "a base_model and ", "optional": "an optional base_model and ", "ignored": ""}[self.base]
        if self.min_non_base is not None or self.max_non_base is not None:
            lo, hi, what = self.min_non_base or 0, self.max_non_base, "other model"
        else:
            lo, hi = self.min_inputs - (self.base == "required"), self.max_inputs
            hi = None if hi is None else hi - (self.base == "required")
            what = "other model" if self.base == "required" else "model"
        count = f"exactly {lo}" if hi == lo else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
        if lo == 0 and hi is None:
            return f"{base}any number of {what}s"
        return f"{base}{count} {what}{'' if (lo == 1 and hi in (None, 1)) else 's'}"

    def check_inputs(self, models: list[str], base: str | None) -> int | None:
        """Check a slice's input models against the contract; the base's index (None when unused)."""
        if self.base == "required" and (base is None or base not in models):
            raise WorkbenchError(f"recipe: merge_method {self.name} needs a base_model among its inputs")
        used = base if (base is not None and base in models and self.base != "ignored") else None
        n_in, n_other = len(models), len(models) - (used is not None)
        bad_in = n_in < self.min_inputs or (self.max_inputs is not None and n_in > self.max_inputs)
        bad_other = (self.min_non_base is not None and n_other < self.min_non_base) or (
            self.max_non_base is not None and n_other > self.max_non_base
        )
        if bad_in or bad_other:
            raise WorkbenchError(
                f"recipe: merge_method {self.name} takes {self.contract()}, got {n_in} "
                f"model{'s' if n_in != 1 else ''} ({', '.join(models)})"
            )
        return None if used is None else models.index(used)


def _p(name: str, typ: type, scope: Scope = "shared", default: Any = REQUIRED, doc: str = "", **kw: Any) -> Parameter:
    return Parameter(name, typ, scope, default, doc=doc, **kw)


_T = _p("t", float, bounds=(0.0, 1.0), enforce="extrapolate", doc="position from the base (0) to the other model (1)")
_SEED = _p("seed", int, default=0, mergekit=False, doc="seeds the random masks (per tensor name)")


def _gta(normalize: bool, rescale: bool, *extra: Parameter, random: bool = False) -> tuple[Parameter, ...]:
    """The parameters of the generalized task arithmetic family."""
    out = (
        _p("int8_mask", bool, default=False, doc="store the sign mask as int8 (no effect on the numbers)"),
        _p("normalize", bool, default=normalize, doc="divide by the sum of the (agreeing) weights"),
        _p("rescale", bool, default=rescale, doc="rescale sparsified deltas to their L1 norm"),
        _p("lambda", float, default=1.0, bounds=(0.0, None), doc="scale of the merged task vector"),
        _p("weight", float, "non_base", doc="weight of the model's task vector"),
        _p("density", float, "non_base", 1.0, bounds=(0.0, 1.0), doc="fraction of the task vector kept"),
        *extra,
    )
    return out + ((_SEED,) if random else ())


def _spec(name: str, summary: str, kernel: str, *params: Parameter, **kw: Any) -> MethodSpec:
    return MethodSpec(name, summary, kernel, tuple(params), **kw)


_GAMMA = _p("gamma", float, "non_base", 0.01, bounds=(0.0, 1.0), doc="fraction of the largest entries dropped")
_EPS_DELLA = _p("epsilon", float, "non_base", 0.15, bounds=(0.0, 0.5), doc="spread of the keep probabilities")
_TA = "task_arithmetic:"

#: every method, in the order help and errors list them
METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        _spec(
            "linear",
            "weighted average of the models (a model soup)",
            "averages:linear_kernel",
            _p("weight", float, "input", bounds=(0.0, None), doc="the model's weight"),
            _p("normalize", bool, default=True, doc="divide by the sum of the weights"),
            gram="averages:linear_coefficients",
            roles=frozenset({SOUP}),
        ),
        _spec(
            "lerp",
            "linear interpolation of two models: (1 - t) base + t other",
            "averages:lerp_kernel",
            _T,
            base="required",
            min_inputs=2,
            max_inputs=2,
            gram="averages:lerp_coefficients",
            roles=frozenset({INTERPOLATION, CURVE}),
            mergekit=False,
        ),
        _spec(
            "slerp",
            "spherical interpolation of two models (LERP when nearly colinear)",
            "sphere:slerp_kernel",
            _T,
            base="required",
            min_inputs=2,
            max_inputs=2,
            gram="sphere:slerp_coefficients",
            roles=frozenset({INTERPOLATION, CURVE, DEFAULT}),
        ),
        _spec(
            "lerp_norm_restore",
            "LERP rescaled to SLERP's norm: the control that isolates the spherical path",
            "sphere:lerp_norm_restore_kernel",
            _T,
            base="required",
            min_inputs=2,
            max_inputs=2,
            gram="sphere:norm_restore_coefficients",
            roles=frozenset({INTERPOLATION, NORM_RESTORE}),
            mergekit=False,
        ),
        _spec(
            "chained_slerp",
            "SLERP folded over several models from the base (per-model t, default 1/2, 1/3, ...)",
            "sphere:chained_slerp_kernel",
            _p("t", float, "non_base", None, bounds=(0.0, 1.0), enforce="extrapolate", nullable=True),
            base="required",
            min_inputs=2,
            mergekit=False,
        ),
        _spec(
            "multislerp",
            "weighted spherical barycentre (tangent space at the normalised mean)",
            "sphere:multislerp_kernel",
            _p("weight", float, "non_base", bounds=(0.0, None), doc="the model's weight"),
            _p("normalize_weights", bool, default=True),
            _p("eps", float, default=1e-8, bounds=(0.0, None)),
            base="optional",
            min_non_base=1,
        ),
        _spec(
            "karcher",
            "Karcher (Riemannian) mean of the models' directions, equal weights",
            "sphere:karcher_kernel",
            _p("max_iter", int, default=10, bounds=(0, None), enforce="error"),
            _p("tol", float, default=1e-5, bounds=(0.0, None)),
        ),
        _spec(
            "task_arithmetic",
            "base + lambda * sum of weighted task vectors",
            _TA + "task_arithmetic_kernel",
            *_gta(False, False),
            base="required",
        ),
        _spec(
            "ties",
            "TIES: trim task vectors by magnitude, elect signs, average the agreeing ones",
            _TA + "ties_kernel",
            *_gta(True, False),
            base="required",
        ),
        _spec(
            "dare_linear",
            "DARE: drop task-vector entries at random, rescale, add",
            _TA + "dare_linear_kernel",
            *_gta(False, True, random=True),
            base="required",
            random=True,
        ),
        _spec(
            "dare_ties",
            "DARE with TIES sign election",
            _TA + "dare_ties_kernel",
            *_gta(False, True, random=True),
            base="required",
            random=True,
        ),
        _spec(
            "breadcrumbs",
            "Model Breadcrumbs: drop the largest and smallest task-vector entries, add",
            _TA + "breadcrumbs_kernel",
            *_gta(False, False, _GAMMA),
            base="required",
        ),
        _spec(
            "breadcrumbs_ties",
            "Model Breadcrumbs with TIES sign election",
            _TA + "breadcrumbs_ties_kernel",
            *_gta(False, False, _GAMMA),
            base="required",
        ),
        _spec(
            "della",
            "DELLA: drop entries at random, small magnitudes more often; TIES sign election",
            _TA + "della_kernel",
            *_gta(True, True, _EPS_DELLA, random=True),
            base="required",
            random=True,
            validate=_TA + "check_della",
        ),
        _spec(
            "della_linear",
            "DELLA without sign election",
            _TA + "della_linear_kernel",
            *_gta(False, True, _EPS_DELLA, random=True),
            base="required",
            random=True,
            validate=_TA + "check_della",
        ),
        _spec(
            "model_stock",
            "Model Stock: interpolate the base and the mean of the fine-tunes by their angle",
            "model_stock:model_stock_kernel",
            _p("filter_wise", bool, default=False, doc="one ratio per row instead of per tensor"),
            base="required",
            min_inputs=3,
        ),
        _spec(
            "nuslerp",
            "SLERP of two models (or of their task vectors with a base), t from their weights",
            "nuslerp:nuslerp_kernel",
            _p("weight", float, "non_base", bounds=(0.0, None), doc="the model's weight (t = w2 / (w1 + w2))"),
            _p("nuslerp_row_wise", bool, default=False, doc="with flatten off: SLERP columns instead of rows"),
            _p("nuslerp_flatten", bool, default=True, doc="SLERP whole tensors (off: row by row)"),
            base="optional",
            min_non_base=2,
            max_non_base=2,
        ),
        _spec(
            "nearswap",
            "take the other model's value where it is within t of the base, interpolate further out",
            "nearswap:nearswap_kernel",
            _p("t", float, bounds=(0.0, None), doc="distance below which the other model's value is taken"),
            base="required",
            min_inputs=2,
            max_inputs=2,
        ),
        _spec(
            "arcee_fusion",
            "keep the other model's changes whose importance (|delta| x KL) is an upper outlier",
            "arcee_fusion:arcee_fusion_kernel",
            _SEED,
            base="required",
            min_inputs=2,
            max_inputs=2,
            random=True,
        ),
        _spec(
            "passthrough",
            "copy one model's tensors (optionally scaled): layer stacking with slices",
            "passthrough:passthrough_kernel",
            _p("scale", float, "input", None, nullable=True, doc="multiply the tensor by this (None: as is)"),
            max_inputs=1,
        ),
        _spec(
            "sce",
            "SCE: select high-variance entries, weight task vectors by energy, erase sign conflicts",
            "sce:sce_kernel",
            _p("int8_mask", bool, default=False, doc="store masks as int8 (no effect on the numbers)"),
            _p("select_topk", float, default=1.0, bounds=(0.0, 1.0), doc="fraction of high-variance entries kept"),
            base="required",
        ),
        _spec(
            "ram",
            "RAM: per entry, the lone contributor's delta or the mean of the contributing deltas",
            "ram:ram_kernel",
            _p("epsilon", float, default=1e-5, bounds=(0.0, None), doc="|delta| above which a model contributes"),
            base="required",
        ),
        _spec(
            "ramplus_tl",
            "RAM+ (tensor-local): RAM with unique contributions scaled up by their overlap ratio",
            "ram:ramplus_tl_kernel",
            _p("r", float, default=0.1, bounds=(0.0, None), doc="strength of the unique-entry boost"),
            _p("alpha", float, default=0.2, bounds=(0.0, None), doc="cap of the overlap ratio"),
            _p("epsilon", float, default=1e-5, bounds=(0.0, None), doc="|delta| above which a model contributes"),
            base="required",
        ),
    )
}


def method_names() -> tuple[str, ...]:
    """Every method name, in registry order."""
    return tuple(METHODS)


def method_spec(name: str) -> MethodSpec:
    """The method called ``name``; an unknown name raises a WorkbenchError listing the known ones."""
    spec = METHODS.get(name)
    if spec is None:
        raise WorkbenchError(f"unknown merge method {name!r}; known: {', '.join(METHODS)}")
    return spec


def methods_with(role: str) -> tuple[MethodSpec, ...]:
    """The methods that have ``role`` (e.g. :data:`INTERPOLATION`), in registry order."""
    return tuple(m for m in METHODS.values() if role in m.roles)


def method_with(role: str) -> MethodSpec:
    """The one method that has ``role`` (e.g. :data:`SOUP`)."""
    (spec,) = methods_with(role)
    return spec


def parameter_names() -> tuple[str, ...]:
    """Every parameter name any method takes, first declaration first (what sweep axes may set)."""
    return tuple(dict.fromkeys(p.name for m in METHODS.values() for p in m.parameters))


def method_help() -> str:
    """One line per method (name, contract, summary), for command help and the README.

    >>> method_help().splitlines()[0]
    'linear: weighted average of the models (a model soup) (at least 1 model; weight*, normalize)'
    """
    lines = []
    for m in METHODS.values():
        params = ", ".join(p.name + ("*" if p.required else "") for p in m.parameters) or "no parameters"
        tag = "" if m.mergekit else "; not in mergekit"
        lines.append(f"{m.name}: {m.summary} ({m.contract()}; {params}{tag})")
    return "\n".join(lines)
