"""Loading models (safe by default) and data (``.npz`` with ``x``[, ``y``] or ``MODULE:CALLABLE`` loaders)."""

from compress.io.data import Dataset, check_fits, load_data, match_model_dtype
from compress.io.model import ExportedModule, build_arch, load_model

__all__ = ["Dataset", "ExportedModule", "build_arch", "check_fits", "load_data", "load_model", "match_model_dtype"]
