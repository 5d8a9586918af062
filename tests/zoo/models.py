"""The zoo's architectures, importable as ``--arch tests.zoo.models:NAME`` (run from the repository root).

They live in two files to stay under the module size limit; this module only re-exports them, so every model
has one stable ``--arch`` spec.
"""

from .models_seq import AudioConvLSTM, BertStyleEncoder, BertStyleEncoderWithMask, GRUSeq2Seq
from .models_vision import EfficientLiteStyle, ShapeCheckedClassifier, SmallUNet, TorchvisionStyleResNet

__all__ = [
    "AudioConvLSTM",
    "BertStyleEncoder",
    "BertStyleEncoderWithMask",
    "EfficientLiteStyle",
    "GRUSeq2Seq",
    "ShapeCheckedClassifier",
    "SmallUNet",
    "TorchvisionStyleResNet",
]
