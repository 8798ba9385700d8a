"""`python -m volt_export MODULE:FACTORY --out model.pt2 ...`: the command line over
`volt_export.export`. FACTORY is called with no arguments and returns the model, or
`(model, inputs)` or `(model, inputs, dims)` with `volt_export.Input`s and
`{name: DimRange}`, so that a model can carry its own signature; `--input`/`--dim`
give or replace them."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

import torch

from .export import export
from .spec import DimRange, ExportError, Input, parse_dim, parse_input


def _factory(target: str):
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ExportError(f"{target!r}: expected MODULE:FACTORY, e.g. my_module:make_model")
    # As `python -m` does: modules in the working directory are importable.
    sys.path.insert(0, str(Path.cwd()))
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if spec is None or spec.loader is None:
                raise ExportError(f"{module_name}: not a Python file")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ExportError(f"cannot import {module_name!r}: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ExportError(f"module {module_name!r} has no {attr!r}") from None


def _unpack(made) -> tuple[torch.nn.Module, list[Input], dict[str, DimRange]]:
    inputs: list[Input] = []
    dims: dict[str, DimRange] = {}
    if isinstance(made, tuple):
        if not 1 <= len(made) <= 3:
            raise ExportError("the factory returned a tuple of the wrong length: (model[, inputs[, dims]])")
        made, *rest = made
        if rest:
            inputs = list(rest[0])
        if len(rest) > 1:
            dims = {k: v if isinstance(v, DimRange) else DimRange(*v) for k, v in dict(rest[1]).items()}
    if not isinstance(made, torch.nn.Module):
        raise ExportError(f"the factory returned a {type(made).__name__}, not a torch.nn.Module")
    return made, inputs, dims


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m volt_export", description=__doc__)
    p.add_argument("factory", help="MODULE:FACTORY (a module name or a .py file), called with no arguments")
    p.add_argument("--out", required=True, help="the file to write: NAME.pt2 (AOTInductor) or NAME.pt (TorchScript)")
    p.add_argument("--input", action="append", default=[], metavar="NAME:DTYPE:SHAPE[:LOW..HIGH]",
                   help="an input, in the order forward takes them; SHAPE is one row's (no batch), sizes or dimension names")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=MIN:MAX", help="a named dynamic dimension")
    p.add_argument("--output", action="append", default=None, metavar="NAME", help="names for the outputs, in order")
    p.add_argument("--example-batch", type=int, default=8, help="the batch size traced (at least 2; default 8)")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=64, help="the largest batch the file takes (default 64)")
    p.add_argument("--format", choices=["aoti", "torchscript"], help="default: from --out's suffix")
    p.add_argument("--name", help="the model's name in volt's /v2/models/NAME (default: --out's stem)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda to compile a CUDA package")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args(argv)
    try:
        model, inputs, dims = _unpack(_factory(args.factory)())
        if args.input:
            inputs = [parse_input(i) for i in args.input]
        dims.update(parse_dim(d) for d in args.dim)
        if not inputs:
            raise ExportError("no inputs: pass --input NAME:DTYPE:SHAPE (or return them from the factory)")
        export(
            model, inputs, args.out, dims=dims, outputs=args.output, example_batch=args.example_batch,
            min_batch=args.min_batch, max_batch=args.max_batch, format=args.format, name=args.name,
            device=args.device, rtol=args.rtol, atol=args.atol,
        )
    except ExportError as e:
        print(f"volt_export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
