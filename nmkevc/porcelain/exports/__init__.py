"""Export formats: a revision written out for other tools, one file per format.

A format is an `ExportFormat` registered here by name (`hf`: a Hugging Face model
directory; `peft`: a LoRA adapter of the change from the base). What every export shares
is done once, in `export`: the target check, the revision resolved, the provenance
record (tool, commit, base, effective set, facts), the staging directory that appears
whole or not at all (gc reaps a killed one) and the one-line error on an OS failure. A
format only turns a revision into files; adding one is one file that calls `register`
(see docs/design.md, "How to add ...").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ...errors import NmkevcError, UsageError
from ...models.hf_dir import check_export_target
from ..describe import facts_at

if TYPE_CHECKING:
    from ...workbench import Workbench

Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class ExportJob:
    """One export, resolved: what a format reads to write its files."""

    bench: Workbench
    #: where the export will appear (files are written to a staging directory first)
    target: Path
    #: the revision as the user named it, and the commit it resolved to
    rev: str
    commit: str
    base: str
    provenance: dict
    options: dict
    progress: Progress = None


class Report(Protocol):
    def to_json(self) -> dict: ...

    def describe(self) -> str:
        """One line for the terminal."""
        ...


@dataclass(frozen=True)
class ExportFormat:
    name: str
    summary: str
    #: options the format takes (name -> one-line help); anything else is refused
    options: dict[str, str]
    #: (job, staging directory) -> the report; files go into the staging directory only
    write: Callable[[ExportJob, Path], Report]
    #: checks the options before any work (e.g. a rank of at least 1)
    check: Callable[[dict], None] = lambda options: None


FORMATS: dict[str, ExportFormat] = {}
#: the shipped formats, each a module of this package imported when first asked for (an export of a
#: cached state in `hf` then loads no torch; `peft` needs it for its factors)
BUILTIN = ("hf", "peft")


def register(fmt: ExportFormat) -> ExportFormat:
    """Add a format (a later registration of the same name replaces the earlier one)."""
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS and name in BUILTIN:
        import_module(f"{__name__}.{name}")  # registers itself; only the format asked for is imported
    try:
        return FORMATS[name]
    except KeyError:
        raise UsageError(f"unknown export format {name!r} (choose one of {', '.join(format_names())})") from None


def format_names() -> list[str]:
    return list(dict.fromkeys([*BUILTIN, *FORMATS]))


def export(bench: Workbench, rev: str, out_dir: str | Path, fmt: str = "hf", progress: Progress = None,
           **options) -> Report:
    """Write the revision `rev` to `out_dir` (absent or empty) in format `fmt`."""
    form = get_format(fmt)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(form.options))
    if unknown:
        raise UsageError(f"--{unknown[0]} does not apply to --format {fmt}")
    form.check(given)
    out = Path(out_dir)
    check_export_target(out)
    repo = bench.repo
    cid = repo.resolve(rev)
    base = repo.commit(cid).base
    provenance = {"tool": "nmkevc", "commit": cid, "base": base, "effective_set": repo.effective(cid),
                  "facts": [r for _, r in facts_at(repo, cid)]}
    job = ExportJob(bench, out, rev, cid, base, provenance, given, progress)
    try:
        with repo.staging_dir(out, "export") as tmp:
            return form.write(job, tmp)
    except OSError as e:
        raise NmkevcError(f"cannot write export to {out}: {e.strerror or e}") from None
