"""Export a PyTorch model for `volt serve`: torch.export with a dynamic batch dimension,
compiled into an AOTInductor package (or traced into a TorchScript module), carrying the
metadata volt reads, after a parity check against eager PyTorch."""

from .export import export
from .spec import DimRange, ExportError, Input, parse_dim, parse_input

__all__ = ["export", "Input", "DimRange", "ExportError", "parse_input", "parse_dim"]
__version__ = "0.1.0"
