"""The first cell of every notebook: inline figures, display settings, the parameters the
pipeline ran with (and their md5, to compare with ``md5sum params.yaml``) and the layout of
what it wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import yaml

from .layout import Layout


def setup(root: str | Path = "..", params_file: str | Path | None = None, sections: tuple[str, ...] = ()) -> tuple[dict, Layout]:
    """``(params, layout)`` of the study under ``root``; prints what ran, plus the named extra ``sections``."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            shell.run_line_magic("matplotlib", "inline")
    except ImportError:  # outside Jupyter: nothing to set up
        pass
    pd.set_option("display.precision", 2)
    params_file = Path(params_file) if params_file is not None else Path(root) / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    print("params file md5:", hashlib.md5(params_file.read_bytes()).hexdigest(), "(compare: md5sum params.yaml)")
    print("study:", json.dumps(params["study"]))
    train = params["train"]
    print("model:", params["model"]["name"], "| iterations:", train["iterations"], "| batch:", train["batch_size"], "| lr:", train["lr"])
    print("methods:", json.dumps({m: params["methods"][m] for m in params["study"]["methods"]}))
    for section in sections:
        print(f"{section}:", json.dumps(params[section]))
    return params, Layout(root)
