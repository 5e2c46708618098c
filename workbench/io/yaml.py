"""YAML loading with one error shape: every recipe, sweep, training recipe, family file and
notebook parameter file goes through :func:`parse_yaml` or :func:`read_yaml_file`.

>>> parse_yaml("a: [1, 2]", "recipe.yaml")
{'a': [1, 2]}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

__all__ = ["is_path_like_source", "parse_yaml", "read_yaml_file"]


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``, with a syntax error turned into one WorkbenchError naming ``where``.

    >>> parse_yaml("a: [1", "recipe.yaml")
    Traceback (most recent call last):
    workbench.errors.WorkbenchError: recipe.yaml: not valid YAML (...)
    """
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise WorkbenchError(f"{where}: not valid YAML ({err})") from None


def read_yaml_file(path: str | os.PathLike, where: str | None = None) -> Any:
    """Parse the YAML file at ``path``; errors name ``where`` (default: the path).

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "x.yaml"; _ = p.write_text("n: 3")
    >>> read_yaml_file(p)
    {'n': 3}
    """
    p = Path(path)
    return parse_yaml(p.read_text(encoding="utf-8"), where or str(p))


def is_path_like_source(source: str | os.PathLike) -> bool:
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
