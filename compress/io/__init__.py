"""Loading models (safe by default) and data (``.npz`` with ``x``[, ``y``] or ``MODULE:CALLABLE`` loaders)."""

from compress.io.data import Dataset, check_fits, load_data
from compress.io.model import ExportedModule, build_arch, load_model

__all__ = ["Dataset", "ExportedModule", "build_arch", "check_fits", "load_data", "load_model"]
