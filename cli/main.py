"""The `memtrace` command: `memtrace MODEL ...` simulates; subcommands do the rest.

Imports stay light here so `memtrace --help` is instant; torch is imported by the commands that run.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any, NoReturn

import click

from memtrace import __version__
from memtrace.cli.bench import bench
from memtrace.cli.compare import compare
from memtrace.cli.fit import fit
from memtrace.cli.gpus import gpus
from memtrace.cli.show import show
from memtrace.cli.sweep import sweep
from memtrace.cli.trace import trace
from memtrace.cli.verify import verify
from memtrace.tracer.core.errors import MemtraceError

_GROUP_OPTIONS = ("--help", "-h", "--version", "--verbose")


class DefaultGroup(click.Group):
    """A group whose first argument, when it is no subcommand, is the MODEL of the default `trace`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in _GROUP_OPTIONS:
            args = ["trace", *args]
        return super().parse_args(ctx, args)


def _remember_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    ctx.meta["memtrace.verbose"] = value


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """`--version`: memtrace's version; with `--verbose`, torch's, each device's rules and the optional ops
    this installation skips (and why). `--verbose` is eager, so it is known here in either order."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"memtrace, version {__version__}")
    if ctx.meta.get("memtrace.verbose"):
        import torch

        from memtrace.tracer.core.registry import patches_for
        from memtrace.tracer.engine.device_model import DEVICES, device_rules, skipped_optional_ops

        click.echo(f"torch {torch.__version__}")
        for device in DEVICES:
            rules = len(device_rules(device)[0])
            click.echo(f"{device}: {rules} workspace rules, {len(patches_for(device))} kernel patches")
        skipped = skipped_optional_ops()
        click.echo("optional ops skipped:" + ("" if skipped else " none"))
        for op in skipped:
            click.echo(f"  {op.device} {op.name}: {op.reason}")
    ctx.exit()


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version", is_flag=True, expose_value=False, callback=_print_version, help="Show the version and exit."
)
@click.option(
    "--verbose",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_remember_verbose,
    help="With --version: torch's version, each device's rule counts and the optional ops skipped.",
)
def cli() -> None:
    """Exact memory of a PyTorch training step, simulated on the meta device.

    \b
    memtrace MODEL --input SHAPE [options]     simulate a step (MODEL is FILE.py:FUNC or package.module:FUNC)
    memtrace trace --help                      every option of that main command
    """


for command in (trace, fit, sweep, gpus, verify, compare, bench, show):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: every user error is one line on stderr and exit code 2.

    Called with no `argv` (the `memtrace` command, `python -m memtrace.cli.main`), the process ends through
    `leave`, without the interpreter's teardown; called with arguments (tests, scripts), it returns or raises
    `SystemExit` as any function would."""
    if argv is None:
        try:
            _run(sys.argv[1:])
        except SystemExit as exc:
            leave(exc.code)
        leave(0)
    return _run(argv)


def leave(code: str | int | None) -> NoReturn:
    """End the process now with `code`, as `sys.exit(code)` would, less the interpreter's teardown.

    A simulation leaves hundreds of thousands of objects (the trace's events and storages, the model on meta);
    freeing them one by one at exit took about a second of a 70B step's run, after every output was written.
    As mypy does at its end, the streams are flushed and the `atexit` handlers run (logging's, PyTorch's
    worker pools'), then `os._exit`. While another non-daemon thread still runs, the ordinary exit is kept,
    which waits for it."""
    if threading.active_count() > 1:
        sys.exit(code)
    status = _status(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`memtrace ... | head`) or a closed stream
            status = status or 1
    os._exit(status)


def _status(code: str | int | None) -> int:
    """`sys.exit`'s meaning of its argument: None is 0, an int is itself, anything else is printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run(args: list[str]) -> Any:
    if not args:
        args = ["--help"]
    try:
        return cli.main(args=args, prog_name="memtrace", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message())
    except click.Abort:
        _fail("aborted")
    except MemtraceError as exc:
        _fail(exc.one_line(), exc.exit_code)


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"memtrace: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
