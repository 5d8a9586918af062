"""Loading models (safe by default) and data (``.npz`` with ``x`` or named inputs [, ``y``], or ``MODULE:CALLABLE`` loaders)."""

from compress.io.data import Dataset, load_data
from compress.io.fit import bind_inputs, check_fits, match_model_dtype
from compress.io.model import ExportedModule, build_arch, load_model

__all__ = ["Dataset", "ExportedModule", "bind_inputs", "build_arch", "check_fits", "load_data", "load_model", "match_model_dtype"]
