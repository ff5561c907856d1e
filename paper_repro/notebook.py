"""The ``notebook`` stage, and the first cell of every notebook.

:func:`execute` runs one notebook source (``notebooks_src/``) with papermill and writes the
executed notebook only once every cell has run: an interrupted or failing execution leaves the
previous notebook in place, never a half-executed one. :func:`setup` is the notebooks' first
cell: inline figures, display settings, the parameters the pipeline ran with (and their md5,
to compare with ``md5sum params.yaml``), whether the tables were made with those parameters
(``dvc.lock``'s record of the ``report`` stage) and the layout of what it wrote.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from .atomic import write_text
from .config import parse_yaml
from .errors import NotebookError
from .layout import Layout


def show_figures_inline() -> None:
    """Figures appear in the notebook, whatever ``MPLBACKEND`` says (no-op outside Jupyter)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")


def setup(root: str | Path = "..", params_file: str | Path | None = None, sections: tuple[str, ...] = ()) -> tuple[dict, Layout]:
    """``(params, layout)`` of the study under ``root``; prints what ran, plus the named extra ``sections``."""
    show_figures_inline()
    pd.set_option("display.precision", 2)
    params_file = Path(params_file) if params_file is not None else Path(root) / "params.yaml"
    params = parse_yaml(params_file.read_text())
    print("params file md5:", hashlib.md5(params_file.read_bytes()).hexdigest(), "(compare: md5sum params.yaml)")
    print("study:", json.dumps(params["study"]))
    train = params["train"]
    print("model:", params["model"]["name"], "| iterations:", train["iterations"], "| batch:", train["batch_size"], "| lr:", train["lr"])
    for dataset, spec in params["datasets"].items():
        if dataset in params["study"]["datasets"] and "train" in spec:
            print(f"train settings of {dataset}:", json.dumps(spec["train"]))
    print("methods:", json.dumps({m: params["methods"][m] for m in params["study"]["methods"]}))
    for section in sections:
        print(f"{section}:", json.dumps(params[section]))
    print(tables_record(Path(root), params))
    return params, Layout(root)


def tables_record(root: Path, params: dict) -> str:
    """Whether ``dvc.lock`` records the ``report`` stage's tables as made with these parameters' sections."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return "tables: no dvc.lock beside them records which parameters made them"
    recorded = parse_yaml(lock.read_text()).get("stages", {}).get("report", {}).get("params", {}).get("params.yaml", {})
    keys = set(recorded) | {key for key in ("study", "ablation", "schedule") if key in params}
    differ = [key for key in sorted(keys) if recorded.get(key) != params.get(key)]
    if differ:
        return (f"tables: made with other {', '.join(differ)} parameters than these (dvc.lock); "
                "they are the last complete run's until `dvc repro` reruns what `dvc status` lists")
    return f"tables: made with these {', '.join(sorted(recorded))} parameters (dvc.lock)"


def execute(name: str, layout: Layout = Layout()) -> Path:
    """Execute the notebook source ``name`` (kernel ``python3``, working directory ``notebooks/``) and
    write it executed; returns its path."""
    import warnings

    import nbformat
    import papermill

    source, target = layout.notebook_source(name), layout.notebook(name)
    if not source.is_file():
        raise NotebookError(f"no notebook source {source}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            executed = papermill.execute_notebook(str(source), None, kernel_name="python3", cwd=str(target.parent), progress_bar=False)
        except papermill.PapermillExecutionError as error:
            raise NotebookError(f"{source}: cell {error.cell_index} raised {error.ename}: {error.evalue}") from error
    executed.metadata.papermill.output_path = str(target)
    write_text(nbformat.writes(executed) + "\n", target)
    return target
