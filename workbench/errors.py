"""The one exception type users see.

Every bad input (a missing file, a shape mismatch, an unknown task) raises
:class:`WorkbenchError` with one sentence that names the file or tensor at fault.
The CLI prints that sentence and exits non-zero; library callers can catch it.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """A user-facing error: the message alone must tell what is wrong and where.

    >>> str(WorkbenchError("model.safetensors: tensor 'x' has shape (2,), expected (3,)"))
    "model.safetensors: tensor 'x' has shape (2,), expected (3,)"
    """
