"""The one exception type users see.

Every bad input (a missing file, a shape mismatch, an unknown task) raises
:class:`WorkbenchError` with one sentence that names the file or tensor at fault.
The CLI prints that sentence and exits non-zero; library callers can catch it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class WorkbenchError(Exception):
    """A user-facing error: the message alone must tell what is wrong and where.

    >>> str(WorkbenchError("model.safetensors: tensor 'x' has shape (2,), expected (3,)"))
    "model.safetensors: tensor 'x' has shape (2,), expected (3,)"
    """


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``, with a syntax error turned into one WorkbenchError naming ``where``.

    >>> parse_yaml("a: [1, 2]", "recipe.yaml")
    {'a': [1, 2]}
    >>> parse_yaml("a: [1", "recipe.yaml")
    Traceback (most recent call last):
    workbench.errors.WorkbenchError: recipe.yaml: not valid YAML (...)
    """
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise WorkbenchError(f"{where}: not valid YAML ({err})") from None


def is_path_like_source(source: "str | os.PathLike") -> bool:
    """Whether a recipe or sweep argument names a file rather than holding YAML text.

    One rule for every loader: a path object, or a one-line string that ends in
    ``.yaml`` / ``.yml`` / ``.json`` or has no ``:`` (YAML text for a mapping always has one).

    >>> is_path_like_source("recipes/slerp.yaml"), is_path_like_source("merge_method: linear")
    (True, False)
    >>> is_path_like_source("C:/recipes/slerp.yml"), is_path_like_source("a: 1\\nb: 2")
    (True, False)
    """
    if isinstance(source, os.PathLike):
        return True
    text = str(source)
    if "\n" in text:
        return False
    return Path(text).suffix.lower() in (".yaml", ".yml", ".json") or ":" not in text
