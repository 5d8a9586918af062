"""TFLite exporter: the converted torch.fx graph → a ``.tflite`` flatbuffer (no TensorFlow), verified in LiteRT.

Modules: :mod:`.export` (the walk over the graph, :func:`export_tflite`), :mod:`.graph` (values, layout and
domain conversions while walking), :mod:`.layout` (NCHW → NHWC bookkeeping), :mod:`.schema` (the flatbuffer
writer), ``ops*.py`` (the emitters, registered against the op registry :mod:`compress.ops`; how LiteRT runs
each op is declared in ``compress/ops/kernels_tflite.py``), :mod:`.verify` (parity in LiteRT).
"""

from compress.exporters.tflite.export import (
    FILE_IDENTIFIER,
    XNNPACK_FLOAT_OPS,
    Int8Kernels,
    TFLiteExportConfig,
    TFLiteExportInfo,
    export_tflite,
    read_file_identifier,
)
from compress.exporters.tflite.verify import load_interpreter, run_tflite, verify_tflite, xnnpack_delegation

__all__ = [
    "FILE_IDENTIFIER",
    "XNNPACK_FLOAT_OPS",
    "Int8Kernels",
    "TFLiteExportConfig",
    "TFLiteExportInfo",
    "export_tflite",
    "load_interpreter",
    "read_file_identifier",
    "run_tflite",
    "verify_tflite",
    "xnnpack_delegation",
]
