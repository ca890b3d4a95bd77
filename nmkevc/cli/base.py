"""The `nmkevc` Click group and what every command module shares: opening the
repository named by `-C`, progress bars, the `--json` flag, and the entry point that
turns every failure into one line and an exit code."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import click

from ..errors import NmkevcError
from ..version import __version__

#: `--json` on every command that has machine-readable output
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def open_repo(ctx: click.Context):
    from ..porcelain.repository import Repository

    return Repository.open(ctx.obj["path"])


def method_names() -> list[str]:
    """The editing methods the CLI offers: the registry's, never a copied list."""
    from ..editing.methods import method_names as names

    return list(names())


def strategy_names() -> list[str]:
    """Merge strategies: the porcelain's registry, never a copied list."""
    from ..porcelain.strategies import strategy_names as names

    return list(names())


class StageBars:
    """Progress bars on stderr (when it is a terminal), one per named stage."""

    def __init__(self):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bars = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = self._tqdm(total=total, desc=stage, leave=False, file=sys.stderr,
                                               disable=None, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@contextmanager
def progress_bar(label: str):
    """A callback(done, total) for one stage, its bar closed on exit."""
    bars = StageBars()
    try:
        yield lambda done, total: bars(label, done, total)
    finally:
        bars.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "path", default=".", metavar="PATH", help="Run as if started in PATH.")
@click.version_option(__version__, prog_name="nmkevc")
@click.pass_context
def cli(ctx: click.Context, path: str) -> None:
    """Version control for knowledge edits to language models."""
    ctx.ensure_object(dict)
    ctx.obj["path"] = path


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and an exit code, never a traceback (NMKEVC_DEBUG=1 shows it)."""
    debug = bool(os.environ.get("NMKEVC_DEBUG"))
    try:
        rv = cli.main(args=argv, prog_name="nmkevc", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:  # usage errors too: one line, not click's three
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted; the repository is unchanged by the unfinished step", err=True)
        return 130
    except NmkevcError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except BrokenPipeError:
        return 141
    except Exception as e:  # a bug of ours: still one line, with a way to see more
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        click.echo(f"error: internal error: {type(e).__name__}: {msg} (set NMKEVC_DEBUG=1 for details)", err=True)
        return 1


def run() -> None:  # console-script shim
    sys.exit(main())
