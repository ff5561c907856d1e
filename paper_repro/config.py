"""Parameter files: ``params.yaml`` (or a preset) plus ``--set dotted.key=value`` overrides.

``params.yaml`` is the single source of every parameter and what DVC records. A preset
(``presets/*.yaml``) is an overlay: it names its base file under ``_base_`` and gives only the
values it changes; :func:`read_params` merges it over its base when it is read (mappings merge
key by key, any other value replaces the base's), and :func:`write_preset` writes the merged,
effective values into ``params.yaml`` for DVC. :func:`load_settings` reads a file and checks
every section (``paper_repro/settings.py``) before any stage does work.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ParamsError
from .settings import Settings, resolve

BASE = "_base_"  # in a preset: the file it overlays, relative to the preset
PRESET = "_preset_"  # in params.yaml written by write_preset: the preset it holds the effective values of


class ParamsLoader(yaml.SafeLoader):
    """YAML as people write numbers: ``1e-3``, ``5e-4`` and ``1e9`` are floats (YAML 1.1, PyYAML's
    default, reads a float without a dot as text; YAML 1.2, which DVC reads, as a float)."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader)


def apply_override(params: dict, assignment: str) -> None:
    """Apply ``dotted.key=value`` in place; the value is parsed as YAML (``0.5``, ``[1, 2]``, ``true``)."""
    if "=" not in assignment:
        raise ParamsError(f"--set expects dotted.key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = params
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ParamsError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section of the parameters")
        node = node[part]
    if parts[-1] not in node:
        raise ParamsError(f"--set {key}: unknown parameter (known here: {', '.join(node)})")
    try:
        node[parts[-1]] = parse_yaml(raw)
    except yaml.YAMLError as error:
        raise ParamsError(f"--set {key}: the value is not valid YAML ({error})") from error


def merged(base: dict, overlay: dict) -> dict:
    """``overlay`` over ``base``: mappings merge key by key, any other value replaces the base's."""
    result = copy.deepcopy(base)
    for key, value in overlay.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else copy.deepcopy(value)
    return result


def read_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The parameters of ``path``, merged over its ``_base_`` (recursively) if it names one."""
    if not path.is_file():
        raise ParamsError(f"parameter file {path} does not exist" + (f" (the {BASE} of {chain[-1]})" if chain else ""))
    try:
        tree = parse_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(tree, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    if BASE not in tree:
        return tree
    if path.resolve() in [p.resolve() for p in chain]:
        raise ParamsError(f"{path}: {BASE} makes a cycle ({' -> '.join(map(str, chain + (path,)))})")
    base_path = path.parent / str(tree.pop(BASE))
    base = read_tree(base_path, chain + (path,))
    if PRESET in base and (base_path.parent / str(base[PRESET])).resolve() != path.resolve():  # the same preset again: no change
        raise ParamsError(f"{path}: its {BASE} {base_path} already holds the effective values of preset {base[PRESET]}; "
                          f"restore the base first (git checkout {base_path})")
    base.pop(PRESET, None)
    return merged(base, tree)


def read_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The parameter tree of ``path`` (merged over its base) with ``overrides`` applied; not yet checked."""
    params = read_tree(Path(path))
    params.pop(PRESET, None)
    for assignment in overrides:
        apply_override(params, assignment)
    return params


def load_settings(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    """Read the parameter file, apply overrides and check every section: what every stage works from."""
    return resolve(read_params(path, overrides), str(path))


def write_preset(preset: str | Path, target: str | Path = "params.yaml") -> dict:
    """Write the effective values of ``preset`` (merged over its base, checked) into ``target``, which DVC reads."""
    from .atomic import write_text

    params = read_params(preset)
    resolve(params, str(preset))
    header = (f"# The effective parameters of {preset} over its base, written by `python -m paper_repro preset {preset}`.\n"
              f"# Edit {preset} and write again; `git checkout {target}` restores the embedded default.\n")
    record = os.path.relpath(Path(preset).resolve(), Path(target).resolve().parent)  # as _base_: relative to the file naming it
    write_text(header + yaml.safe_dump({PRESET: record} | params, sort_keys=False, width=120), target)
    return params
