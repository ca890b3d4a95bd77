"""The `nmkevc` Click group and what every command module shares: opening the
repository named by `-C`, progress bars, the `--json` flag, and the entry point that
turns every failure into one line and an exit code."""

from __future__ import annotations

import gc
import io
import math
import os
import re
import sys
from contextlib import contextmanager

import click

from ..errors import NmkevcError
from ..version import __version__

#: Packages of fsspec backends whose exceptions are the backend's words, not our bugs.
_BACKENDS = frozenset({"botocore", "aiobotocore", "s3fs", "gcsfs", "google", "adlfs", "azure", "huggingface_hub",
                       "fsspec", "aiohttp"})

#: `--json` on every command that has machine-readable output
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def open_repo(ctx: click.Context):
    """The repository `-C` names, with the lock wait `--wait` asked for; problems it
    skips while serving the command (e.g. a corrupt ref) are printed after it."""
    from ..porcelain.repository import Repository

    state = ctx.find_root().obj
    repo = Repository.open(state["path"], wait=state.get("wait"), on_lock_wait=_tell_waiting,
                           device=state.get("device"), dtype=state.get("dtype"))
    state.setdefault("repos", []).append(repo)
    return repo


def _tell_waiting(holder) -> None:
    click.echo(f"waiting for the repository lock, held by {holder.describe()}...", err=True)


class RepoPath(click.ParamType):
    """A path argument, taken relative to `-C`'s directory as git does (absolute paths
    as given). With `hub_ok`, a name shaped like a hub id (org/name) that is not a
    directory there is passed through unchanged; so are the names in `keep` (built-in
    data sets, say)."""

    name = "path"

    def __init__(self, hub_ok: bool = False, keep: tuple[str, ...] = ()):
        self.hub_ok = hub_ok
        self.keep = tuple(keep)

    def convert(self, value, param, ctx):
        if value is None or os.path.isabs(value) or value in self.keep:
            return value
        root = (ctx.find_root().params.get("path") if ctx else None) or "."
        joined = os.path.join(root, value)
        if self.hub_ok and not os.path.exists(joined) and _looks_like_hub_id(value):
            return value
        return joined


def _looks_like_hub_id(value: str) -> bool:
    from ..porcelain import looks_like_hub_id

    return looks_like_hub_id(value)


def _parse_wait(value: str | None) -> float | None:
    """`--wait` alone: no limit; `--wait=SECONDS`: at most that long."""
    if value is None:
        return None
    if value == "":
        return math.inf
    try:
        seconds = float(value)
    except ValueError:
        raise click.BadParameter(f"--wait={value}: expected a number of seconds") from None
    if not seconds >= 0 or math.isnan(seconds):
        raise click.BadParameter(f"--wait={value}: expected a number of seconds >= 0")
    return seconds


def hoist_wait(argv: list[str]) -> tuple[list[str], str | None]:
    """Take `--wait` / `--wait=SECONDS` out of argv wherever it stands (before `--`), so
    it works as a global option and on every command alike, and can never swallow the
    next argument as its value. Returns (the rest, "" for bare --wait, or the value)."""
    out: list[str] = []
    wait: str | None = None
    for i, a in enumerate(argv):
        if a == "--":
            out += argv[i:]
            break
        if a == "--wait":
            wait = ""
        elif a.startswith("--wait="):
            wait = a[len("--wait="):]
        else:
            out.append(a)
    return out, wait


def method_names() -> list[str]:
    """The editing methods the CLI offers: the registry's, never a copied list."""
    from ..porcelain import method_names as names

    return list(names())


def strategy_names() -> list[str]:
    """Merge strategies: the porcelain's registry, never a copied list."""
    from ..porcelain.strategies import strategy_names as names

    return list(names())


class StageBars:
    """Progress bars on stderr (when it is a terminal and output is not --json), one per named
    stage (an edit's: statistics, z, attribution, update)."""

    def __init__(self, enabled: bool = True):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bars = {}
        self.disable = None if enabled else True  # None: tqdm's own rule, off without a terminal

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = self._tqdm(total=total, desc=stage, leave=False, file=sys.stderr,
                                               disable=self.disable, dynamic_ncols=True)
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
@click.option("-C", "path", default=".", metavar="PATH",
              help="Run as if started in PATH (path arguments are taken relative to it).")
@click.option("--device", default=None, metavar="DEVICE",
              help="Where the model runs: auto, cpu, cuda, cuda:N or mps (default: the repository's, set at init).")
@click.option("--dtype", default=None, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="The model's weight dtype (default: the repository's, set at init).")
@click.version_option(__version__, prog_name="nmkevc")
@click.pass_context
def cli(ctx: click.Context, path: str, device: str | None, dtype: str | None) -> None:
    """Version control for knowledge edits to language models.

    --wait[=SECONDS] (before or after the command): wait for another command's
    repository lock instead of failing at once (no limit without SECONDS; the config
    setting lock_wait gives a default)."""
    ctx.ensure_object(dict)
    if device is not None and not device.strip():
        raise click.BadParameter("--device: empty (give auto, cpu, cuda, cuda:N or mps)")
    ctx.obj["path"] = path  # --wait was taken out of argv by main() (see hoist_wait)
    ctx.obj["device"] = device
    ctx.obj["dtype"] = dtype


#: Control characters (C0 but tab and newline, DEL, C1) and escape sequences other than the
#: colour codes (SGR) click.style writes: history text from strangers (a fetched commit's
#: message, a bundle's author) must not move the cursor, retitle the terminal or worse.
_CONTROL = re.compile(r"(\x1b\[[0-9;]*m)|\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?"
                      r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` without control characters, keeping newlines, tabs and colour codes."""
    return _CONTROL.sub(lambda m: m.group(1) or "", text)


class _PrintableStream(io.TextIOBase):
    """stdout as the commands see it: every write passes through `printable`."""

    def __init__(self, inner):
        self._inner = inner

    def write(self, s: str) -> int:
        self._inner.write(printable(s))
        return len(s)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return self._inner.isatty()

    def fileno(self) -> int:
        return self._inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._inner, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._inner, "errors", None)


def _first_line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return printable(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and an exit code, never a traceback (NMKEVC_DEBUG=1 shows it)."""
    stdout = sys.stdout
    sys.stdout = _PrintableStream(stdout)
    try:
        return _main(argv)
    finally:
        sys.stdout = stdout


def _main(argv: list[str] | None) -> int:
    debug = bool(os.environ.get("NMKEVC_DEBUG"))
    state: dict = {}
    try:
        args, wait = hoist_wait(list(sys.argv[1:] if argv is None else argv))
        if wait is not None:
            state["wait"] = _parse_wait(wait)
        rv = cli.main(args=args, prog_name="nmkevc", standalone_mode=False, obj=state)
        for repo in state.get("repos", []):
            for w in repo.warnings():
                click.echo(f"warning: {w}", err=True)
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
        click.echo(f"error: {_first_line(e)}", err=True)
        return e.exit_code
    except BrokenPipeError:
        return 141
    except OSError as e:  # the machine said no (disk full, permissions): its words, one line
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        click.echo(printable(f"error: {e.strerror or _first_line(e)}{where}"), err=True)
        return 74  # EX_IOERR
    except (OverflowError, RecursionError, MemoryError) as e:  # input beyond what can be held
        if debug:
            raise
        what = {OverflowError: "a number given is too large", RecursionError: "the input is nested too deeply",
                MemoryError: "out of memory"}[type(e)]
        click.echo(f"error: {what} ({_first_line(e)[:120]})", err=True)
        return 2 if not isinstance(e, MemoryError) else 1
    except Exception as e:  # a bug of ours: still one line, with a way to see more
        if debug:
            raise
        if type(e).__module__.split(".")[0] in _BACKENDS:  # a storage backend's own refusal
            click.echo(f"error: the storage backend said {type(e).__name__}: {_first_line(e)[:200]}", err=True)
            return 1
        click.echo(f"error: internal error: {type(e).__name__}: {_first_line(e)} (set NMKEVC_DEBUG=1 for details)",
                   err=True)
        return 1


def run() -> None:  # console-script shim
    code = main()
    # The interpreter's exit collections would walk every object still tracked: after torch has
    # loaded, ~0.4 s of CPU per command, to free memory the process returns anyway. Nothing
    # left needs one to be finalised (what we write is closed and fsynced by now; the atexit
    # handlers and weakref finalizers still run), so they are frozen out of it.
    gc.freeze()
    sys.exit(code)
