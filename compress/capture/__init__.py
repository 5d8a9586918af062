"""Model → one graph: ``torch.export`` for every ``nn.Module`` and ``.pt2`` program, raised to torch layers.

:func:`capture` exports a module (batch dimension dynamic) and raises the aten program to the module-level fx
graph every pass and exporter reads; :func:`raise_exported_program` does the second half for a loaded
``.pt2``. See docs/architecture.md, "Capture".
"""

from compress.capture.export import capture
from compress.capture.raiser import KEPT_META, raise_exported_program, supported_aten_ops

__all__ = ["KEPT_META", "capture", "raise_exported_program", "supported_aten_ops"]
