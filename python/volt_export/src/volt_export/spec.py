"""What a model takes: its inputs (name, dtype, per-row shape, value range) and its named
dynamic dimensions, as the Python API takes them and as the command line spells them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

# The dtypes volt serves, by PyTorch's name (what the metadata records).
DTYPES = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}

BATCH = "batch"


class ExportError(Exception):
    """The model, its inputs or the exported file are not what volt can serve."""


@dataclass(frozen=True)
class Input:
    """One input of the model: its name, dtype and the shape of one row (the batch
    dimension left out); each size is a number or the name of a dynamic dimension.
    `low`/`high` bound the values of generated examples (token ids below the vocabulary
    size, masks of ones); floats default to a standard normal, integers to [0, 10)."""

    name: str
    dtype: str
    shape: tuple[Union[int, str], ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None

    @property
    def torch_dtype(self) -> torch.dtype:
        try:
            return DTYPES[self.dtype]
        except KeyError:
            raise ExportError(
                f"input {self.name!r}: dtype {self.dtype!r} is not one volt serves ({', '.join(DTYPES)})"
            ) from None


@dataclass(frozen=True)
class DimRange:
    """A dynamic dimension's bounds, as `torch.export.Dim(name, min=, max=)`."""

    min: int
    max: int


def dtype_name(dtype: torch.dtype) -> str:
    """PyTorch's short name of a dtype (`float32`), as the metadata records it."""
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise ExportError(f"dtype {dtype} is not one volt serves ({', '.join(DTYPES)})")


def parse_input(text: str) -> Input:
    """`NAME:DTYPE:SHAPE[:LOW..HIGH]`, e.g. `image:float32:1,28,28` or
    `input_ids:int64:seq:0..30522`; an empty SHAPE is one value per row."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or not parts[0]:
        raise ExportError(
            f"--input {text!r}: expected NAME:DTYPE:SHAPE[:LOW..HIGH], e.g. image:float32:1,28,28"
        )
    name, dtype, shape_text = parts[:3]
    shape: list[Union[int, str]] = []
    for entry in filter(None, shape_text.split(",")):
        entry = entry.strip()
        if entry.isdigit():
            shape.append(int(entry))
        elif entry.isidentifier():
            shape.append(entry)
        else:
            raise ExportError(f"--input {text!r}: size {entry!r} is neither a number nor a dimension's name")
    low = high = None
    if len(parts) == 4:
        bounds = parts[3].split("..")
        try:
            low, high = (float(b) for b in bounds)
        except ValueError:
            raise ExportError(f"--input {text!r}: value range {parts[3]!r} is not LOW..HIGH") from None
    spec = Input(name, dtype, tuple(shape), low, high)
    spec.torch_dtype  # refuses an unknown dtype now, naming the input
    return spec


def parse_dim(text: str) -> tuple[str, DimRange]:
    """`NAME=MIN:MAX`, e.g. `seq=2:256`."""
    name, _, bounds = text.partition("=")
    lo, _, hi = bounds.partition(":")
    if not name.isidentifier() or not lo.isdigit() or not hi.isdigit():
        raise ExportError(f"--dim {text!r}: expected NAME=MIN:MAX, e.g. seq=2:256")
    return name, DimRange(int(lo), int(hi))
