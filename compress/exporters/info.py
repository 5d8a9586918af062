"""One record of what an exporter wrote, for both formats (:func:`~compress.exporters.export_onnx`,
:func:`~compress.exporters.export_tflite`).

The common fields are what verification, the pipeline's report and the CLI read whatever the format; the
format-specific ones are typed fields that stay None for the other format (never a string-keyed bag).

Example:
    >>> info = ExportInfo(format="onnx", path="m.onnx", bytes=1200, quantized=True, opset=17,
    ...                   output_scales=[(0.05, -3)], op_histogram={"Conv": 1})
    >>> info.to_dict()["opset"], "schema_version" in info.to_dict()
    (17, False)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum

# The fields only one format fills; to_dict() leaves them out when None so reports stay per format.
_FORMAT_SPECIFIC = ("opset", "activation_dtype", "schema_version", "int8_io", "nhwc_input", "inputs", "outputs")


@dataclass
class ExportInfo:
    """What was written.

    Attributes:
        format: ``"onnx"`` or ``"tflite"``.
        path, bytes: the file and its size.
        quantized: an int8 file (else float).
        input_names, output_names: graph input / output names, in the model's order.
        output_scales: per output, ``(scale, zero_point)`` of the quantizer feeding it (the torch quantizer's
            own zero point), or None for a float output: what parity is measured in LSBs of.
        output_tolerances: per output, None when it is meant to be bit-faithful (≤ 1 LSB), or the relative
            tolerance (max |diff| / max |reference|) it is verified with when an approximated op (a quantized
            LSTM / GRU) lies upstream; ``approximations`` says which ops and why.
        op_histogram: op type → count in the written graph.
        node_count: operators in the graph.
        float_fallbacks: ops written as float subgraphs because the format has no emitter for them
            (``"flip (aten.flip)"``); reported in ``float_ops``.
        probe_values: fx node name → the value in the file that holds its int8 output (ONNX: the name of
            its QuantizeLinear's output), what op-by-op verification compares; the file's own value names
            are short and say nothing of the model.
        seconds: how long the export took.
        opset, activation_dtype: ONNX only (the pinned opset; uint8 / int8 activation storage).
        schema_version, int8_io, nhwc_input, inputs, outputs: TFLite only (flatbuffer schema; int8 graph
            inputs / outputs; NHWC input layout; input / output tensor descriptions).
    """

    format: str
    path: str
    bytes: int = 0
    quantized: bool = False
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    output_scales: list[tuple[float, int] | None] = field(default_factory=list)
    output_tolerances: list[float | None] = field(default_factory=list)
    op_histogram: dict[str, int] = field(default_factory=dict)
    node_count: int = 0
    float_fallbacks: list[str] = field(default_factory=list)
    approximations: list[str] = field(default_factory=list)
    probe_values: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    # -- ONNX only
    opset: int | None = None
    activation_dtype: str | None = None  # an ActivationDType (a str enum)
    # -- TFLite only
    schema_version: int | None = None
    int8_io: bool | None = None
    nhwc_input: bool | None = None
    inputs: list[dict] | None = None
    outputs: list[dict] | None = None

    def to_dict(self) -> dict:
        """JSON-ready: enums as their values, scales as lists, the other format's fields left out."""
        d = asdict(self)
        for key in _FORMAT_SPECIFIC:
            if d[key] is None:
                del d[key]
        if isinstance(self.activation_dtype, Enum):
            d["activation_dtype"] = self.activation_dtype.value
        d["output_scales"] = [list(s) if s is not None else None for s in self.output_scales]
        return d


__all__ = ["ExportInfo"]
