"""``kilnrt`` entry point: one subcommand per module, KilnErrors as one clean red line."""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Sequence

from kilnrt.cli.args import common_options, console, setup_logging
from kilnrt.errors import KilnError

# subcommand -> module (each has HELP, add_arguments(parser) and main(args) -> exit code)
COMMANDS = {
    "build": "kilnrt.cli.build",
    "run": "kilnrt.cli.run",
    "bench": "kilnrt.cli.bench",
    "inspect": "kilnrt.cli.inspect",
    "compare": "kilnrt.cli.compare",
    "exec": "kilnrt.cli.exec",
    "demo": "kilnrt.cli.demo",
    "serve": "kilnrt.cli.serve",
    "debug": "kilnrt.cli.debug",
}


def make_parser() -> argparse.ArgumentParser:
    from kilnrt import __version__

    parser = argparse.ArgumentParser(
        prog="kilnrt", description="kilnrt: build, run and inspect optimized inference engines "
                                   "(see docs/cli.md)")
    parser.add_argument("--version", action="version", version=f"kilnrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options()
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__, parents=[common],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(handler=module.main)
    return parser


def report_error(exc: BaseException) -> None:
    from rich.markup import escape

    err = console(stderr=True)
    text = exc.describe() if isinstance(exc, KilnError) else f"{type(exc).__name__}: {exc}"
    first, _, rest = text.partition("\n")
    err.print(f"[bold red]error:[/] {escape(first)}")
    if rest:
        err.print(escape(rest))


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed why
        return int(exc.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    args.argv = ["kilnrt", *(sys.argv[1:] if argv is None else argv)]   # the command line, as typed
    try:
        return int(args.handler(args) or 0)
    except (KilnError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        report_error(exc)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
