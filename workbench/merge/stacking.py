"""Layer stacking's config: the output's layer count and its per-layer metadata.

A merge whose output layers come from other layers than the reference model's (``slices``
with offset or stacked layer ranges, e.g. layers 0-3 of A then 1-4 of B) gets a config with
the new ``num_hidden_layers`` and every per-layer list (:data:`PER_LAYER_KEYS`, e.g. Qwen's
and Gemma's ``layer_types``) rebuilt from the layers it took: output layer j carries the
entry of the source layer it came from, read from that source model's config (or derived by
transformers when the config leaves it implicit, e.g. from ``max_window_layers``). mergekit
0.1.5 keeps the donor's lists, which transformers then refuses when the count changed.

>>> ref = {"num_hidden_layers": 3, "layer_types": ["full", "sliding", "full"]}
>>> b = {"num_hidden_layers": 2, "layer_types": ["sliding", "sliding"]}
>>> stacked_config(ref, {"a": ref, "b": b}, [("a", 0), ("a", 1), ("b", 1), ("a", 2)])["layer_types"]
['full', 'sliding', 'sliding', 'full']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PER_LAYER_KEYS", "stacked_config"]

#: config keys holding one entry per layer (transformers validates the first two against the count)
PER_LAYER_KEYS = ("layer_types", "mlp_layer_types", "no_rope_layers")


def _derived(config: Mapping[str, Any], key: str) -> list | None:
    """``key`` as transformers fills it in for this config (None when the model has no such list)."""
    try:
        from transformers import AutoConfig

        cfg = dict(config)
        model_type = cfg.pop("model_type", None)
        for k in ("transformers_version", "architectures", "_name_or_path"):
            cfg.pop(k, None)
        value = getattr(AutoConfig.for_model(model_type, **cfg), key, None) if model_type else None
    except Exception:  # an architecture transformers does not know: nothing to derive
        return None
    return list(value) if isinstance(value, (list, tuple)) else None


def _per_layer(config: Mapping[str, Any], key: str, cache: dict) -> list | None:
    ident = (id(config), key)
    if ident not in cache:
        value = config.get(key)
        n = config.get("num_hidden_layers")
        if isinstance(value, list) and (n is None or len(value) == n):
            cache[ident] = list(value)
        else:
            cache[ident] = _derived(config, key)
    return cache[ident]


def stacked_config(
    reference: Mapping[str, Any], configs: Mapping[str, Mapping[str, Any]], layers: Sequence[tuple[str, int]]
) -> dict:
    """The reference config with ``num_hidden_layers = len(layers)`` and every per-layer list
    rebuilt: ``layers[j] = (model, source layer)`` of output layer j, ``configs`` each model's.

    Layers that are the reference's own layers in order change nothing but the count.
    """
    config = json.loads(json.dumps(reference))
    config["num_hidden_layers"] = len(layers)
    ref_model = next((m for m, c in configs.items() if c is reference), None)
    if ref_model is not None and list(layers) == [(ref_model, i) for i in range(reference.get("num_hidden_layers", 0))]:
        return config
    cache: dict = {}
    for key in PER_LAYER_KEYS:
        if key not in reference and _per_layer(reference, key, cache) is None:
            continue
        values = []
        for model, src in layers:
            per = _per_layer(configs[model], key, cache)
            if per is None or src >= len(per):
                values = None
                break
            values.append(per[src])
        if values is None:
            config.pop(key, None)  # unknown for some layer: let transformers derive it for the new count
        else:
            config[key] = values
    return config
