"""torch.export with a dynamic batch, compiled into an AOTInductor package (or traced into
a TorchScript module), with volt's metadata, and checked against eager PyTorch at several
batch sizes before the file is written (atomically: a failed check leaves nothing)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch.utils import _pytree as pytree

from .spec import BATCH, DimRange, ExportError, Input, dtype_name

METADATA_FORMAT = 1


def export(
    model: torch.nn.Module,
    inputs: Sequence[Input],
    out: Union[str, os.PathLike],
    *,
    dims: Optional[Mapping[str, DimRange]] = None,
    outputs: Optional[Sequence[str]] = None,
    example_batch: int = 8,
    min_batch: int = 1,
    max_batch: int = 64,
    format: Optional[str] = None,
    name: Optional[str] = None,
    device: str = "cpu",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Path:
    """Exports `model` (called as `model(*inputs)`, every input batched along its first
    dimension) to `out`: an AOTInductor package (`.pt2`) or a TorchScript module (`.pt`);
    returns the path written."""
    out = Path(out)
    fmt = format or ("aoti" if out.suffix == ".pt2" else "torchscript" if out.suffix in (".pt", ".ts") else None)
    if fmt not in ("aoti", "torchscript"):
        raise ExportError(f"{out}: cannot tell the format from the suffix; name a .pt2 (aoti) or .pt (torchscript) file, or pass format")
    if fmt == "aoti" and out.suffix != ".pt2":
        raise ExportError(f"{out}: an AOTInductor package's name must end in .pt2")
    dims = dict(dims or {})
    _check_batches(example_batch, min_batch, max_batch)
    _check_inputs(inputs, dims)
    if not inputs:
        raise ExportError("the model needs at least one input")
    model = model.eval().to(device)
    sizes = _example_sizes(dims, example_batch)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        example = _make(inputs, example_batch, sizes, gen, device)
        names, eager = _flat_outputs(model(*example), outputs)
        for n, t in zip(names, eager):
            if t.dim() == 0 or t.shape[0] != example_batch:
                raise ExportError(
                    f"output {n!r} has shape {tuple(t.shape)} for a batch of {example_batch}: volt batches "
                    f"along the first dimension of every input and output"
                )
        output_shapes = _output_shapes(model, inputs, dims, sizes, example_batch, names, eager, outputs, gen, device)

    batch_dim = torch.export.Dim(BATCH, min=min_batch, max=max_batch)
    named = {d: torch.export.Dim(d, min=r.min, max=r.max) for d, r in dims.items()}
    dynamic = tuple(
        {0: batch_dim, **{i + 1: named[s] for i, s in enumerate(inp.shape) if isinstance(s, str)}} for inp in inputs
    )
    program = _export_program(model, example, dynamic) if fmt == "aoti" else None
    values = _value_ranges(inputs, program)
    meta = {
        "volt_export": METADATA_FORMAT,
        "torch_version": torch.__version__,
        "name": name or out.stem,
        "inputs": [
            {"name": i.name, "dtype": i.dtype, "shape": [BATCH, *i.shape], **({"values": values[k]} if k in values else {})}
            for k, i in enumerate(inputs)
        ],
        "outputs": [
            {"name": n, "dtype": dtype_name(t.dtype), "shape": shape} for n, t, shape in zip(names, eager, output_shapes)
        ],
        "batch_dim": BATCH,
        "dims": {BATCH: {"min": min_batch, "max": max_batch}, **{d: {"min": r.min, "max": r.max} for d, r in dims.items()}},
    }
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")
    started = time.monotonic()
    try:
        if program is not None:
            _compile_aoti(program, meta, tmp)
        else:
            _trace_torchscript(model, example, meta, tmp)
        made = "compiled" if fmt == "aoti" else "traced"
        log(f"volt_export: {fmt} {made} in {time.monotonic() - started:.1f} s")
        _check_parity(fmt, tmp, model, inputs, dims, min_batch, example_batch, max_batch, outputs, rtol, atol, gen, device, log)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"volt_export: wrote {out} (torch {torch.__version__}, batch {min_batch}..{max_batch})")
    return out


def _check_batches(example: int, lo: int, hi: int) -> None:
    if example < 2:
        raise ExportError(
            f"example batch {example}: it must be at least 2, because torch.export specialises a dimension "
            f"whose example size is 0 or 1 to that constant, and the package would take no other batch"
        )
    if lo < 1:
        raise ExportError(f"min batch {lo}: it must be at least 1")
    if not lo <= example <= hi:
        raise ExportError(f"example batch {example} must lie within the batch range {lo}..{hi}")


def _check_inputs(inputs: Sequence[Input], dims: Mapping[str, DimRange]) -> None:
    seen = set()
    for inp in inputs:
        if inp.name in seen:
            raise ExportError(f"two inputs are named {inp.name!r}")
        seen.add(inp.name)
        inp.torch_dtype
        for s in inp.shape:
            if isinstance(s, str) and s not in dims:
                raise ExportError(f"input {inp.name!r} names dimension {s!r}; declare its range (--dim {s}=MIN:MAX)")
            if isinstance(s, int) and s < 1:
                raise ExportError(f"input {inp.name!r} has a size {s}; sizes are at least 1")
        if inp.low is not None and inp.high is not None and not inp.low < inp.high:
            raise ExportError(f"input {inp.name!r}: value range {inp.low}..{inp.high} is empty")
    if BATCH in dims:
        raise ExportError(f"{BATCH!r} is the batch dimension; name the others differently")
    for d, r in dims.items():
        if not 1 <= r.min <= r.max:
            raise ExportError(f"dimension {d!r}: range {r.min}..{r.max} is empty or starts below 1")
        if r.max < 2:
            raise ExportError(f"dimension {d!r}: a dynamic dimension must allow sizes of 2 or more")


def _example_sizes(dims: Mapping[str, DimRange], batch: int) -> dict[str, int]:
    """One example size per dynamic dimension, each at least 2 (the 0/1 trap) and unlike
    the others and the batch, so that torch.export cannot take two of them for one."""
    taken = {batch}
    sizes = {}
    for d, r in dims.items():
        n = max(2, r.min)
        while n in taken and n < r.max:
            n += 1
        sizes[d] = n
        taken.add(n)
    return sizes


def _make(inputs: Sequence[Input], batch: int, sizes: Mapping[str, int], gen: torch.Generator, device: str) -> tuple:
    """Random inputs of a batch, dynamic dimensions at `sizes`."""
    out = []
    for inp in inputs:
        shape = (batch, *(sizes[s] if isinstance(s, str) else s for s in inp.shape))
        dt = inp.torch_dtype
        if dt.is_floating_point:
            if inp.low is None and inp.high is None:
                t = torch.randn(shape, generator=gen)
            else:
                lo, hi = inp.low or 0.0, inp.high if inp.high is not None else 1.0
                t = torch.rand(shape, generator=gen) * (hi - lo) + lo
        elif dt == torch.bool:
            t = torch.randint(0, 2, shape, generator=gen).bool()
        else:
            lo = int(inp.low) if inp.low is not None else 0
            hi = int(inp.high) if inp.high is not None else 10
            t = torch.randint(lo, hi, shape, generator=gen)
        out.append(t.to(dt).to(device))
    return tuple(out)


def _flatten(result) -> tuple[list, list]:
    """A model's result as (names, values): a dict's keys and values, else every leaf of
    the tensors, tuples and lists it is, named `output0`, `output1`, ..."""
    if isinstance(result, Mapping):
        return list(result.keys()), list(result.values())
    leaves, _ = pytree.tree_flatten(result)
    return [f"output{i}" for i in range(len(leaves))], leaves


def _flat_outputs(result, names: Optional[Sequence[str]]) -> tuple[list[str], list[torch.Tensor]]:
    """The model's outputs as a flat list of tensors, with their names: given ones, a
    dict's keys, else `output0`, `output1`, ..."""
    keys, tensors = _flatten(result)
    for k, t in zip(keys, tensors):
        if not isinstance(t, torch.Tensor):
            raise ExportError(f"output {k!r} is a {type(t).__name__}, not a tensor")
    if names is not None:
        if len(names) != len(tensors):
            raise ExportError(f"{len(names)} output names given, but the model gives {len(tensors)} outputs")
        keys = list(names)
    keys = [str(k) for k in keys]
    if len(set(keys)) != len(keys):
        raise ExportError(f"two outputs share a name ({', '.join(keys)}); responses name each output")
    return keys, tensors


def _output_shapes(model, inputs, dims, sizes, batch, names, eager, outputs, gen, device) -> list[list]:
    """Each output's shape for the metadata: the batch, fixed sizes, and the dynamic
    dimensions it follows (found by running the model again at other sizes)."""
    other = {d: (sizes[d] + 1 if sizes[d] < r.max else sizes[d] - 1) for d, r in dims.items()}
    other_batch = batch + 1 if batch + 1 not in other.values() else batch + 2
    _, again = _flat_outputs(model(*_make(inputs, other_batch, other, gen, device)), outputs)
    shapes = []
    for n, a, b in zip(names, eager, again):
        if a.dim() != b.dim() or b.shape[0] != other_batch:
            raise ExportError(f"output {n!r} changes rank or loses its batch dimension with the input's sizes")
        shape: list = [BATCH]
        for j in range(1, a.dim()):
            if a.shape[j] == b.shape[j]:
                shape.append(int(a.shape[j]))
                continue
            follows = [d for d in dims if sizes[d] == a.shape[j] and other[d] == b.shape[j]]
            if not follows:
                raise ExportError(
                    f"output {n!r}: dimension {j} varies with the input ({a.shape[j]}, then {b.shape[j]}) "
                    f"but follows no named dimension"
                )
            shape.append(follows[0])
        shapes.append(shape)
    return shapes


def _export_program(model, example, dynamic):
    try:
        return torch.export.export(model, example, dynamic_shapes=dynamic)
    except Exception as e:  # torch raises many kinds; all mean the model did not export
        raise ExportError(f"torch.export failed: {e}") from e


def _value_ranges(inputs: Sequence[Input], program) -> dict[int, list[int]]:
    """The values each integer input may hold, recorded so that volt refuses others with
    a 400: an id past an embedding table's end makes a compiled lookup fail inside a
    parallel region, which takes the serving process down. Given ranges (`low`/`high`)
    first; else, for an input the exported graph feeds straight into an embedding, that
    table's rows."""
    found: dict[int, list[int]] = {}
    for k, inp in enumerate(inputs):
        if inp.torch_dtype.is_floating_point or inp.high is None:
            continue
        found[k] = [int(inp.low or 0), int(inp.high)]
    if program is None:
        return found
    given = set(found)
    placeholders = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.aten.embedding.default:
            continue
        weight, ids = node.args[0], node.args[1]
        if getattr(ids, "op", None) != "placeholder" or ids.name not in placeholders:
            continue
        k = placeholders.index(ids.name)
        if k in given:
            continue
        # An input that indexes several tables takes the smallest.
        rows = int(weight.meta["val"].shape[0])
        high = min(rows, found[k][1]) if k in found else rows
        found[k] = [int(inputs[k].low or 0), high]
    return found


def _compile_aoti(program, meta, path: Path) -> None:
    torch._inductor.aoti_compile_and_package(
        program,
        package_path=str(path),
        inductor_configs={"aot_inductor.metadata": {"volt": json.dumps(meta)}},
    )


class _Flat(torch.nn.Module):
    """The model with its outputs as a flat tuple of tensors (a dict's values in key
    order, nested tuples flattened), as AOTInductor gives them and volt reads them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return tuple(_flatten(self.model(*inputs))[1])


def _trace_torchscript(model, example, meta, path: Path) -> None:
    try:
        traced = torch.jit.trace(_Flat(model), example, strict=False, check_trace=False)
    except Exception as e:
        raise ExportError(f"torch.jit.trace failed: {e}") from e
    torch.jit.save(traced, str(path), _extra_files={"volt.json": json.dumps(meta)})


def _batches_to_check(lo: int, example: int, hi: int) -> list[int]:
    # AOTInductor raises a batch minimum of 1 to 2 (volt pads a single row to 2), so the
    # smallest batch checked is 2.
    return sorted({max(lo, 2), min(max(3, lo), hi), example, hi})


def _check_parity(fmt, path, model, inputs, dims, lo, example, hi, outputs, rtol, atol, gen, device, log) -> None:
    """Eager and exported outputs must agree at several batch sizes (dynamic dimensions at
    their bounds); the file is not written otherwise."""
    loaded = torch._inductor.aoti_load_package(str(path)) if fmt == "aoti" else torch.jit.load(str(path))
    worst = 0.0
    for k, batch in enumerate(_batches_to_check(lo, example, hi)):
        # Dynamic dimensions alternate between their smallest and largest sizes.
        sizes = {d: max(2, r.min) if k % 2 == 0 else r.max for d, r in dims.items()}
        args = _make(inputs, batch, sizes, gen, device)
        with torch.no_grad():
            names, want = _flat_outputs(model(*args), outputs)
            try:
                _, got = _flat_outputs(loaded(*args), outputs)
            except Exception as e:  # whatever the runtime raises, the file does not work
                raise ExportError(f"batch {batch}: the exported model fails where eager PyTorch runs: {e}") from e
        if len(got) != len(want):
            raise ExportError(f"the exported model gives {len(got)} outputs, eager PyTorch {len(want)}")
        for n, g, w in zip(names, got, want):
            if g.shape != w.shape or g.dtype != w.dtype:
                raise ExportError(
                    f"batch {batch}: output {n!r} is {g.dtype}{list(g.shape)} exported, {w.dtype}{list(w.shape)} eager"
                )
            if w.is_floating_point():
                close = torch.isclose(g.double(), w.double(), rtol=rtol, atol=atol, equal_nan=True)
                # NaN against NaN (or the same infinity) agrees; NaN against a number is
                # infinitely far.
                raw = (g.double() - w.double()).abs()
                diff = torch.where(close, raw.nan_to_num(nan=0.0), raw.nan_to_num(nan=float("inf")))
                worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
                if not bool(close.all()):
                    raise ExportError(
                        f"batch {batch}: output {n!r} differs from eager PyTorch by up to {float(diff.max()):.3g} "
                        f"(rtol {rtol}, atol {atol}); the exported model is not written"
                    )
            elif not torch.equal(g, w):
                raise ExportError(f"batch {batch}: output {n!r} differs from eager PyTorch")
        at = "".join(f", {d} {n}" for d, n in sizes.items())
        log(f"volt_export: batch {batch}{at} matches eager PyTorch")
    log(f"volt_export: largest difference from eager PyTorch {worst:.3g}")
