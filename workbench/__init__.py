"""Workbench: merge language-model checkpoints and judge the merge honestly.

One hop from here to every capability:

- checkpoints: ``open_checkpoint``, ``load_model``, ``load_tokenizer`` (workbench.checkpoints)
- merging: ``load_recipe``, ``merge_in_memory``, ``merge_to_disk`` (workbench.merge)
- geometry: ``tensor_angles`` (workbench.geometry)
- evaluation: ``evaluate`` (workbench.eval)
- checkpoint families: ``train_family`` (workbench.factory)
- statistics and verdicts: workbench.stats, workbench.compare
- sweeps: workbench.sweep; figures: workbench.plots; notebook widgets: workbench.widgets
"""

from __future__ import annotations

__version__ = "0.1.0"

from workbench.errors import WorkbenchError

__all__ = ["WorkbenchError", "__version__"]
