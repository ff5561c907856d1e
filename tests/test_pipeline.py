"""dvc.yaml against the code: every stage declares exactly the paper_repro files its command loads,
and reads and writes where ``paper_repro.layout`` says."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_PARAMS
from paper_repro.layout import Layout, Run

PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# A study of two runs, so that report and explain can run too.
PARAMS = TINY_PARAMS | {"study": TINY_PARAMS["study"] | {"percents": [50]}, "model": TINY_PARAMS["model"] | {"pretrained_backbone": True}}
STAGES = ["generate", "subsets", "pretrain", "runs", "report", "explain"]  # in data-flow order
DATASET = "tiny-streets"
RUN = Run(DATASET, "pals", 50, 0)  # the explained run (TINY_PARAMS's explain section)
ITEM = {"${item.dataset}": RUN.dataset}

# Writes the source file of every module loaded by a Python process, when it exits, to $LOADED_MODULES_LOG.
SITECUSTOMIZE = """
import atexit, os, sys

def _write_loaded_modules():
    with open(os.environ["LOADED_MODULES_LOG"], "a") as log:
        for module in list(sys.modules.values()):
            if getattr(module, "__file__", None):
                log.write(module.__file__ + "\\n")

if os.environ.get("LOADED_MODULES_LOG"):
    atexit.register(_write_loaded_modules)
"""


def substitute(text: str, extra: dict | None = None) -> str:
    for key, value in (ITEM | (extra or {})).items():
        text = text.replace(key, value)
    return text


def code_files(paths) -> set[str]:
    return {path for path in paths if path.startswith("paper_repro/")}


def loaded_code(log: Path) -> set[str]:
    package = ROOT / "paper_repro"
    files = {Path(line).resolve() for line in log.read_text().splitlines()}
    return {str(path.relative_to(ROOT)) for path in files if path.is_relative_to(package)}


def run_logged(command: str, workspace: Path, log: Path, hook: Path, env_extra: dict | None = None) -> None:
    env = os.environ | {"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "LOADED_MODULES_LOG": str(log), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env |= env_extra or {}
    result = subprocess.run(["bash", "-c", command], cwd=workspace, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    """Run each stage's command as dvc.yaml spells it, in order, on the two-run study; what each loaded."""
    workspace, hook = tmp_path_factory.mktemp("pipeline"), tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (workspace / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    loaded = {}
    for stage in STAGES:
        log = workspace / f"{stage}.modules"
        log.touch()
        run_logged(substitute(PIPELINE[stage]["cmd"]), workspace, log, hook)  # the runs stage: both runs, in two worker processes
        loaded[stage] = loaded_code(log)
    return workspace, loaded


@pytest.mark.parametrize("stage", STAGES)
def test_stage_declares_exactly_the_code_its_command_loads(stage_runs, stage):
    _, loaded = stage_runs
    declared = code_files(PIPELINE[stage]["deps"])
    assert sorted(loaded[stage] - declared) == [], f"{stage} loads code it does not declare"
    assert sorted(declared - loaded[stage]) == [], f"{stage} declares code it does not load"


def test_notebook_stages_declare_exactly_the_code_the_notebooks_load(tmp_path):
    """Each notebook stage's command, run on a copy of the committed results, with its kernel; with
    ``MPLBACKEND=Agg`` set, every figure a notebook saves is also shown."""
    for folder in ("results", "notebooks_src"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "notebooks").mkdir()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    stage = PIPELINE["notebooks"]
    declared, used = code_files(stage["do"]["deps"]), set()
    for name in stage["foreach"]:
        shutil.rmtree(tmp_path / Layout(".").figure(name, "any").parent, ignore_errors=True)  # what this execution saves
        log = tmp_path / f"{name}.modules"
        log.touch()
        run_logged(stage["do"]["cmd"].replace("${item}", name), tmp_path, log, hook, {"MPLBACKEND": "Agg"})
        loaded = loaded_code(log)
        assert "paper_repro/plots.py" in loaded  # the kernel's modules are in the log too
        assert sorted(loaded - declared) == [], f"notebook {name} loads code the notebooks stage does not declare"
        used |= loaded
        executed = json.loads((tmp_path / Layout(".").notebook(name)).read_text())
        shown = sum("image/png" in output.get("data", {}) for cell in executed["cells"] if cell["cell_type"] == "code" for output in cell["outputs"])
        saved = list((tmp_path / Layout(".").figure(name, "any").parent).glob("*.png"))
        assert shown == len(saved), f"{name}: it saved {len(saved)} figures and shows {shown}"
        committed = (ROOT / Layout(".").figure(name, "any").parent).glob("*.png")
        assert sorted(path.name for path in saved) == sorted(path.name for path in committed), f"{name}: other figures than committed"
    assert sorted(declared - used) == [], "the notebooks stage declares code no notebook loads"


def expected_outputs(stage: str, layout: Layout) -> set[Path]:
    """Where the layout says each stage writes, for the test's run."""
    dataset = RUN.dataset
    return {
        "generate": {layout.data(dataset), layout.data_summary(dataset), layout.class_geometry(dataset), layout.samples(dataset)},
        "pretrain": {layout.pretrained_backbone(), layout.pretrain_log(), layout.pretrain_metrics()},
        "subsets": {layout.manifests(dataset), layout.coverage(dataset)},
        "runs": set(layout.run_folders(dataset)),
        "report": {layout.table("main").parent},
        "explain": {layout.explanation(dataset)},
    }[stage]


def declared_outputs(spec: dict) -> set[Path]:
    paths = set()
    for key in ("outs", "metrics", "plots"):
        for entry in spec.get(key, []):
            paths.add(Path(substitute(next(iter(entry)) if isinstance(entry, dict) else entry)))
    return paths


@pytest.mark.parametrize("stage", STAGES)
def test_stage_outputs_are_the_layouts_and_are_written_there(stage_runs, stage):
    workspace, _ = stage_runs
    expected = expected_outputs(stage, Layout("."))
    assert declared_outputs(PIPELINE[stage]) == expected
    for path in expected:
        assert (workspace / path).exists(), f"{stage} did not write {path}"
    if stage == "runs":  # each run's files lie in the stage's folders
        for method in PARAMS["study"]["methods"]:
            run = Run(DATASET, method, 50, 0)
            assert all(any(path.is_relative_to(folder) for folder in expected) for path in Layout(".").run_files(run))
            assert (workspace / Layout(".").metrics(run)).is_file() and (workspace / Layout(".").model(run)).is_file()


def test_stage_inputs_are_the_layouts():
    layout = Layout(".")
    deps = {stage: {Path(substitute(d)) for d in PIPELINE[stage]["deps"] if not d.startswith("paper_repro/")}
            for stage in ("subsets", "runs", "report", "explain")}
    assert deps["subsets"] == {layout.data(DATASET)}
    assert deps["runs"] == {layout.data(DATASET), layout.manifests(DATASET), layout.pretrained_backbone()}
    assert deps["report"] == {layout.metrics(RUN).parent.parent, layout.log(RUN).parent.parent}
    assert deps["explain"] == {layout.data(DATASET), layout.run_dir(RUN).parent}
    notebook, name = PIPELINE["notebooks"]["do"], "02_main_results"
    outputs = {Path(substitute(next(iter(entry)), {"${item}": name})) for entry in notebook["outs"]}
    assert outputs == {layout.notebook(name), layout.figure(name, "any").parent}
    assert layout.notebook_source(name) in {Path(substitute(d, {"${item}": name})) for d in notebook["deps"]}
    inputs = {Path(d) for d in notebook["deps"] if not d.startswith(("paper_repro/", "notebooks_src/", "params.yaml"))}
    assert inputs == {layout.data_summary(DATASET).parent, layout.samples(DATASET).parent, layout.coverage(DATASET).parent,
                      layout.table("main").parent, layout.metrics(RUN).parent.parent, layout.predictions(RUN).parent.parent,
                      layout.explanation(DATASET).parent, layout.pretrain_metrics().parent, layout.bench("cpu").parent}


def test_for_a_real_dataset_no_run_depends_on_the_generator_or_the_pretraining(tmp_path):
    """A preset's setting, at the tiny scale: a dataset in the real Cityscapes layout (no generate:) and a
    model that does not load the pretrain stage's weights. After `dvc repro`, an edit to the embedded
    generator or to the pretraining invalidates no run (`dvc status`); an edit to the training loop does.
    An edit to the bench's or the launcher's settings, in their schema or their parameters, invalidates nothing."""
    from paper_repro.data.synthetic import generate_cityscapes_like

    real = generate_cityscapes_like(tmp_path / "real-streets", n_train=8, n_val=3, height=32, width=64, seed=0)
    spec = {key: value for key, value in TINY_PARAMS["datasets"][DATASET].items() if key != "generate"} | {"root": str(real)}
    params = TINY_PARAMS | {"datasets": {"real-streets": spec}, "study": TINY_PARAMS["study"] | {"datasets": ["real-streets"], "percents": [50]},
                            "ablation": {"datasets": ["real-streets"], "methods": ["ls"], "percents": [50], "seeds": [0]},  # the runs stage reads both
                            "schedule": {"factor": 2, "datasets": ["real-streets"], "methods": ["ce"], "percents": [50], "seeds": [0]}}
    workspace = tmp_path / "study"
    workspace.mkdir()
    shutil.copytree(ROOT / "paper_repro", workspace / "paper_repro", ignore=shutil.ignore_patterns("__pycache__"))
    stages = {name: PIPELINE[name] for name in ("generate", "subsets", "pretrain", "runs")}  # the runs and what they read
    (workspace / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = os.environ | {"PYTHONPATH": str(workspace), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "DVC_NO_ANALYTICS": "1"}

    def dvc(*arguments: str) -> str:
        result = subprocess.run([sys.executable, "-m", "dvc", *arguments], cwd=workspace, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
    dvc("init", "-q")
    dvc("repro")
    assert json.loads(dvc("status", "--json")) == {}
    for module, expected in (("data/synthetic.py", {"generate@real-streets", "pretrain"}), ("pretrain.py", {"pretrain"}),
                             ("train.py", {"pretrain", "runs@real-streets"}), ("tool_settings.py", set()),
                             ("settings.py", {"generate@real-streets", "subsets@real-streets", "pretrain", "runs@real-streets"})):
        source = workspace / "paper_repro" / module
        original = source.read_text()
        source.write_text(original + "# an edit\n")
        assert set(json.loads(dvc("status", "--json"))) == expected, module
        source.write_text(original)
    tools = yaml.safe_load((ROOT / "params.yaml").read_text())
    (workspace / "params.yaml").write_text(yaml.safe_dump(params | {key: tools[key] for key in ("bench", "launch")}, sort_keys=False))
    assert json.loads(dvc("status", "--json")) == {}


def test_notebooks_say_whether_dvc_lock_records_the_tables_as_made_with_these_parameters(tmp_path):
    from paper_repro.notebook import tables_record

    params = {"study": {"seeds": [0, 1]}, "schedule": {"factor": 4}, "train": {"iterations": 5}}
    assert tables_record(tmp_path, params) == "tables: no dvc.lock beside them records which parameters made them"
    lock = {"schema": "2.0", "stages": {"report": {"cmd": "python -m paper_repro report",
                                                    "params": {"params.yaml": {"study": {"seeds": [0, 1]}, "schedule": {"factor": 4}}}}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert tables_record(tmp_path, params) == "tables: made with these schedule, study parameters (dvc.lock)"
    assert tables_record(tmp_path, params | {"train": {"iterations": 6}}).startswith("tables: made with these")  # not the report's
    changed = tables_record(tmp_path, params | {"study": {"seeds": [0, 1, 2]}, "ablation": {"seeds": [0]}})
    assert changed.startswith("tables: made with other ablation, study parameters than these (dvc.lock)")


@pytest.mark.parametrize("stage", ["generate", "subsets", "runs"])
def test_each_scaled_stage_is_its_stage_on_the_dataset_drawn_larger(stage):
    """``<stage>-scaled`` runs over scale.datasets with the same command, code and outputs as ``<stage>``, on
    ``<dataset>-x<factor>``; it reads scale.factor (and the runs stage the scale section instead of the grids)."""
    base, scaled = PIPELINE[stage], PIPELINE[f"{stage}-scaled"]
    assert base["matrix"] == {"dataset": "${study.datasets}"} and scaled["matrix"] == {"dataset": "${scale.datasets}"}

    def larger(text: str) -> str:
        return text.replace("${item.dataset}", "${item.dataset}-x${scale.factor}")

    def paths(spec: dict, key: str) -> list[str]:
        return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in spec.get(key, [])]

    assert scaled["cmd"] == larger(base["cmd"])
    for key in ("deps", "outs", "metrics", "plots"):
        assert paths(scaled, key) == [larger(path) for path in paths(base, key)], key
        assert [entry[path] for entry, path in zip(scaled.get(key, []), paths(scaled, key)) if isinstance(entry, dict)] == \
            [entry[path] for entry, path in zip(base.get(key, []), paths(base, key)) if isinstance(entry, dict)], key
    added, removed = {"generate": (["scale.factor"], []), "subsets": (["scale.factor"], []),
                      "runs": (["scale"], ["study", "ablation", "schedule"])}[stage]
    assert sorted(scaled["params"]) == sorted([key for key in base["params"] if key not in removed] + added)
