"""``python -m paper_repro compare REFERENCE``: this workspace's results against another run of the same study.

``REFERENCE`` is the root of another copy of the repository whose ``results/metrics`` hold the
same runs, e.g. the committed results (``git worktree add ../committed HEAD``) beside a rerun
on another machine. ``dvc metrics diff`` lists the raw differences; this command adds, per run,
the mIoU difference beside the seed-to-seed spread of its cell, and, per cell of the main and
ablation and schedule tables, each verdict of the paired interval to ``ce`` in both and whether it holds:
a verdict *holds* when both intervals exclude 0 on the same side or neither excludes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from .atomic import write_table
from .layout import Layout
from .report import GROUP, load_runs, summarise, with_paired
from .settings import BASELINE, Settings

log = logging.getLogger(__name__)
RUN_KEYS = [*GROUP, "seed"]


def verdict(row: pd.Series, suffix: str = "") -> str:
    """``better``, ``worse`` (the paired 95% interval to ``ce`` excludes 0) or ``unresolved``."""
    if not row[f"miou_resolved{suffix}"]:
        return "unresolved"
    return "better" if row[f"miou_ci_low{suffix}"] > 0 else "worse"


def compare_runs(here: pd.DataFrame, there: pd.DataFrame) -> pd.DataFrame:
    """Per run: mIoU here and in the reference, their difference, and the standard deviation over seeds of
    the reference's cell (the spread a difference from float rounding alone should stay well inside)."""
    spread = summarise(there, "miou")[[*GROUP, "miou_std"]].rename(columns={"miou_std": "seed_std"})
    runs = here[[*RUN_KEYS, "miou"]].merge(there[[*RUN_KEYS, "miou"]], on=RUN_KEYS, suffixes=("", "_reference"), validate="one_to_one")
    runs["difference"] = runs["miou"] - runs["miou_reference"]
    return runs.merge(spread, on=GROUP).round(4)


def compare_verdicts(here: pd.DataFrame, there: pd.DataFrame) -> pd.DataFrame:
    """Per cell (dataset, method, percent, schedule) but ``ce``: the paired difference to ``ce`` with its
    interval here and in the reference, the two verdicts and whether the verdict holds."""
    columns = [*GROUP, "miou_delta_vs_ce", "miou_ci_low", "miou_ci_high", "miou_resolved"]
    cells = with_paired(here, "miou")[columns].merge(with_paired(there, "miou")[columns], on=GROUP, suffixes=("", "_reference"))
    cells = cells[cells["method"] != BASELINE].reset_index(drop=True)
    cells["verdict"] = cells.apply(verdict, axis=1)
    cells["verdict_reference"] = cells.apply(verdict, axis=1, suffix="_reference")
    cells["holds"] = cells["verdict"] == cells["verdict_reference"]
    return cells.round(4)


def compare(settings: Settings, reference: Path, out: Path | None = None, layout: Layout = Layout()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compare every run of the study, the ablation and the schedule sensitivity here with the same runs under ``reference``."""
    runs = settings.runs()
    here, there = load_runs(runs, layout), load_runs(runs, Layout(reference))
    per_run, per_cell = compare_runs(here, there), compare_verdicts(here, there)
    with pd.option_context("display.width", 200, "display.max_rows", None, "display.max_columns", None):
        print(per_run.to_string(index=False))
        print()
        print(per_cell.to_string(index=False))
    ratio = (per_run["difference"].abs() / per_run["seed_std"]).median()
    print(f"\n{len(per_run)} runs: median |difference| {per_run['difference'].abs().median():.2f} mIoU points, "
          f"largest {per_run['difference'].abs().max():.2f}; median |difference| / seed std of its cell {ratio:.2f}")
    changed = per_cell[~per_cell["holds"]]
    print(f"{len(per_cell)} verdicts (paired 95% interval to ce): {len(per_cell) - len(changed)} hold, {len(changed)} change"
          + "".join(f"\n  {row.dataset} {row.method} {row.percent}% x{row.schedule}: {row.verdict_reference} -> {row.verdict}"
                    for row in changed.itertuples()))
    if out is not None:
        write_table(per_run, out.with_name(f"{out.stem}_runs{out.suffix}"))
        write_table(per_cell, out)
        log.info("wrote %s and %s", out, out.with_name(f"{out.stem}_runs{out.suffix}"))
    return per_run, per_cell
