"""Workbench: merge language-model checkpoints and judge the merge honestly.

One hop from here to every capability (the README's "What is where" table says the same):

- checkpoints: ``open_checkpoint``, ``load_model``, ``load_tokenizer`` (workbench.checkpoints);
  atomic files, safetensors, YAML, data directory (workbench.io); tensor names and groups
  (workbench.naming); accurate reductions (workbench.numerics); test models (workbench.testing)
- merging: ``load_recipe``, ``merge_in_memory``, ``merge_to_disk``, the method registry
  (workbench.merge); permutation alignment of independent runs: ``align_checkpoints`` (workbench.align)
- geometry: ``tensor_angles`` (workbench.geometry)
- evaluation: ``evaluate``, the task registry, ``EvalSettings`` (workbench.eval); results cache
  (workbench.store)
- checkpoint families: ``train_family`` (workbench.factory)
- statistics: workbench.stats; the claim check and its verdict: workbench.claim
- sweeps: workbench.sweep; merge search (dev-only objective, winner checked on test):
  ``run_search`` (workbench.search); figures: workbench.plots; notebook widgets: workbench.widgets;
  headless notebooks: workbench.runner; the demo: workbench.demo; the CLI: workbench.cli
"""

from __future__ import annotations

__version__ = "0.1.0"

from workbench.errors import WorkbenchError

__all__ = ["WorkbenchError", "__version__"]
