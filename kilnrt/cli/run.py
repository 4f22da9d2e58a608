"""Run a plan once and show (and save) its outputs.

    kilnrt run model.plan                          # seeded random inputs
    kilnrt run model.plan --input input=x.npy --output-dir out/
    kilnrt run model.plan --shapes input:4x3x224x224 --seed 7
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from kilnrt.cli.args import (add_shape_option, console, engine_inputs, load_engine, load_input_files,
                             parse_shapes, safe_filename)

HELP = "run a plan on given or random inputs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", metavar="PLAN", help="a plan file (or an ONNX model, built with defaults)")
    p.add_argument("--input", "-i", action="append", metavar="NAME=FILE.npy", help="an input from a .npy file")
    add_shape_option(p, help="shapes of the random inputs for dynamic dims, e.g. input:4x3x224x224")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--output-dir", "-o", metavar="DIR", help="save every output as DIR/NAME.npy")
    p.add_argument("--values", type=int, default=6, metavar="N", help="how many values to print per output")


def _preview(a: np.ndarray, n: int) -> str:
    flat = a.reshape(-1)[:n]
    text = np.array2string(flat, precision=5, separator=", ", max_line_width=10_000)
    return text[:-1] + (", ...]" if a.size > n else "]")


def main(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    engine = load_engine(args.plan, args)
    files = load_input_files(args.input)
    feeds = engine_inputs(engine, args.seed, parse_shapes(args.shapes), files)
    t0 = time.perf_counter()
    outputs = engine.run(feeds)
    ms = (time.perf_counter() - t0) * 1e3
    table = Table(title=f"{engine.name}: outputs ({ms:.2f} ms, first run)")
    for col in ("tensor", "shape", "dtype", "values", "min", "max", "mean"):
        table.add_column(col)
    for name, value in feeds.items():
        source = "from file" if name in files else f"random, seed {args.seed}"
        table.add_row(f"[dim]input[/] {escape(name)}", str(list(value.shape)), str(value.dtype),
                      escape(_preview(np.asarray(value), args.values)), source, "", "")
    for name, value in outputs.items():
        stats = ("", "", "")
        if value.size and value.dtype.kind in "fiub":
            v = value.astype(np.float64)
            stats = (f"{v.min():.5g}", f"{v.max():.5g}", f"{v.mean():.5g}")
        table.add_row(f"[bold]output[/] {escape(name)}", str(list(value.shape)), str(value.dtype),
                      escape(_preview(value, args.values)), *stats)
    out.print(table)
    if args.output_dir:
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, value in outputs.items():
            path = folder / f"{safe_filename(name)}.npy"
            np.save(path, value)
            out.print(f"saved {escape(name)} -> {path}")
    return 0
