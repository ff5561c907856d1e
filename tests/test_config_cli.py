"""Parameters, presets and the command line: validation and one-line errors for user mistakes."""

import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import ROOT, TINY_PARAMS, run_cli
from paper_repro.cli import STAGES, main
from paper_repro.config import ParamsError, apply_override, load_settings, read_params, write_preset
from paper_repro.layout import Layout, Run

DVC_ENV = os.environ | {"DVC_NO_ANALYTICS": "1"}
PARAMETER_FILES = [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))]


@pytest.mark.parametrize("path", PARAMETER_FILES, ids=lambda p: p.name)
def test_params_and_presets_resolve_and_validate(path):
    settings = load_settings(path)
    for dataset in settings.study.datasets:
        assert dataset in settings.datasets
    assert {"ce", "ls", "pals"} <= set(settings.study.methods)
    # the embedded default and the real presets run 3 seeds over the paper's grid of label percents, the embedded GPU preset 10
    assert settings.study.seeds == (tuple(range(10)) if path.name == "embedded-gpu.yaml" else (0, 1, 2))
    assert settings.study.percents == (10, 30, 50, 100)


def test_the_embedded_gpu_preset_runs_the_default_studys_runs_with_the_same_settings_and_more_seeds():
    """Each run of the default study is a run of the GPU preset with settings equal but for how runs share
    the machine; the preset adds seeds to the grid, the sweep and the schedule check, and nothing else."""
    from dataclasses import asdict

    from paper_repro.settings import TrainSettings

    default, gpu = load_settings(ROOT / "params.yaml"), load_settings(ROOT / "presets" / "embedded-gpu.yaml")
    assert set(default.runs()) < set(gpu.runs())
    assert {(run.dataset, run.method, run.percent, run.schedule) for run in gpu.runs()} == {
        (run.dataset, run.method, run.percent, run.schedule) for run in default.runs()}
    assert {run.seed for run in gpu.runs()} == set(range(10))
    for run in default.runs():
        ours, theirs = asdict(default.run(run)), asdict(gpu.run(run))
        assert ours.pop("train") != theirs.pop("train") and ours == theirs
        assert default.run(run).train.defining_weights() == gpu.run(run).train.defining_weights()
    assert (gpu.train.runs_at_once, gpu.train.workers) == (8, 1) and set(TrainSettings.RESUMABLE_ACROSS) >= {"runs_at_once", "workers"}


def test_real_presets_use_the_paper_scale_model_and_real_data():
    for name, kind in (("cityscapes", "cityscapes"), ("voc", "voc")):
        settings = load_settings(ROOT / "presets" / f"{name}.yaml")
        assert (settings.model.name, settings.model.pretrained_backbone) == ("deeplabv3plus_resnet101", True)
        assert not settings.model.loads_pretrain_stage
        [dataset] = settings.study.datasets
        assert settings.datasets[dataset].kind == kind and not settings.datasets[dataset].generate
        assert settings.evaluate.batch_size == 1  # full-resolution images, one per forward pass


def test_overrides_are_parsed_as_yaml_and_must_name_known_keys():
    params = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    apply_override(params, "train.lr=0.5")
    apply_override(params, "study.seeds=[3, 4]")
    assert params["train"]["lr"] == 0.5 and params["study"]["seeds"] == [3, 4]
    with pytest.raises(ParamsError, match="train.learning_rate: unknown parameter"):
        apply_override(params, "train.learning_rate=0.1")
    with pytest.raises(ParamsError, match="expects dotted.key=value"):
        apply_override(params, "train.lr")


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.iterations=0", "train.iterations must be a positive integer, got 0"),
        ("train.lr=-1", "train.lr must be a positive number"),
        ("train.amp=fp8", "train.amp must be one of off, bf16, fp16"),
        ("train.cache_decoded=1", "train.cache_decoded must be true or false, got 1"),
        ("study.percents=[10, 0.5]", "study.percents must be a non-empty list of integer percents in (0, 100], got [10, 0.5]"),
        ("study.percents=[10, 10]", "study.percents lists a value twice"),
        ("study.methods=[ce, focal]", "study.methods names 'focal'"),
        ("study.methods=[pals]", "study.methods must include ce, the baseline"),
        ("study.datasets=[kitti]", "study.datasets names 'kitti'"),
        # each method's loss parameters, by the loss's own rules
        ("methods.pals.tau=0", "methods.pals.tau must be a positive number (the affinity temperature), got 0"),
        ("pretrain.size=[8,64]", "pretrain.size must be [height, width] of integers >= 16, got [8, 64]"),
        ("pretrain.typical_look=2", "pretrain.typical_look must be a number in [0, 1], got 2"),
        ("pretrain.lr=0", "pretrain.lr must be a positive number, got 0"),
        ("methods.pals.alpha=1.5", "methods.pals.alpha must be a number in [0, 1], got 1.5"),
        ("methods.pals.T=0", "methods.pals.T must be a positive number (the teacher temperature)"),
        ("methods.pals={loss: pals, token_budget: 2.5}", "methods.pals.token_budget must be a non-negative integer (0 = no pooling)"),
        ("methods.ls.eps=1.2", "methods.ls.eps must be a number in [0, 1], got 1.2"),
        ("methods.ce.loss=focal", "methods.ce.loss must be one of ce, ls, pals"),
        ("methods.ce={loss: ce, tau: 0.1}", "methods.ce: loss 'ce' takes parameters none, got unknown ['tau']"),
        # models, dataset kinds, augmentation, generator sizes, evaluation
        ("model.name=resnet", "model.name must be one of deeplabv3plus_resnet101"),
        ("datasets.tiny-streets.kind=kitti", "datasets.tiny-streets.kind must be one of cityscapes, voc, got 'kitti'"),
        ("datasets.tiny-streets.scale_range=[2, 1]", "datasets.tiny-streets.scale_range must be [low, high] with 0 < low <= high"),
        ("datasets.tiny-streets.generate.height=0", "datasets.tiny-streets.generate.height must be an integer >= 16, got 0"),
        ("datasets.tiny-streets.generate.n_train=2.5", "datasets.tiny-streets.generate.n_train must be a positive integer, got 2.5"),
        ("datasets.tiny-streets.generate={n_train: 8, n_val: 3, height: 32, width: 64, seed: 0, depth: 3}",
         "datasets.tiny-streets.generate.depth: unknown argument"),
        ("evaluate.figure_images=-1", "evaluate.figure_images must be a non-negative integer, got -1"),
        ("evaluate.calibration_bins=0", "evaluate.calibration_bins must be a positive integer, got 0"),
        ("evaluate.batch_size=0", "evaluate.batch_size must be a positive integer, got 0"),
        # the explanation figure's run must be a PALS run of the study
        ("explain.percent=30", "explain.percent must be one of study.percents [50, 100], got 30"),
        ("explain.seed=3", "explain.seed must be one of study.seeds [0], got 3"),
        ("explain.method=ce", "explain.method must be a method with the PALS aggregation"),
        ("explain.method=ls", "explain.method must be one of study.methods (ce, pals), got 'ls'"),
    ],
)
def test_invalid_parameters_name_the_key(tmp_path, override, message):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(TINY_PARAMS))
    with pytest.raises(ParamsError) as error:
        load_settings(path, [override])
    assert message in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize(
    "ablation,message",
    [
        ({"methods": ["ce", "pals_tau_low"]}, "ablation.methods names ['ce'], which the study already runs"),
        ({"methods": ["pals"]}, "ablation.methods names ['pals'], which the study already runs"),
        ({"percents": [10]}, "ablation.percents names 10, which is not under study.percents"),
        ({"seeds": [1]}, "ablation.seeds names 1, which is not under study.seeds"),
    ],
)
def test_ablation_lists_only_variants_over_the_study_runs(tmp_path, ablation, message):
    params = TINY_PARAMS | {"methods": TINY_PARAMS["methods"] | {"pals_tau_low": {"loss": "pals", "tau": 0.03}},
                            "ablation": {"datasets": ["tiny-streets"], "methods": ["pals_tau_low"], "percents": [50], "seeds": [0]}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    load_settings(path)  # valid as it is
    path.write_text(yaml.safe_dump(params | {"ablation": params["ablation"] | ablation}))
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_settings(path)


@pytest.mark.parametrize(
    "schedule,message",
    [
        ({"factor": 1}, "schedule.factor must be an integer >= 2, got 1"),
        ({"methods": ["ls"]}, "schedule.methods names 'ls', which is not under study.methods"),
        ({"percents": [10]}, "schedule.percents names 10, which is not under study.percents"),
    ],
)
def test_the_schedule_sensitivity_trains_study_runs_a_multiple_longer(tmp_path, tiny_workspace, schedule, message):
    spec = TINY_PARAMS["datasets"]["tiny-streets"]
    params = TINY_PARAMS | {"datasets": {"tiny-streets": spec | {"train": {"iterations": 3}}},
                            "schedule": {"factor": 2, "datasets": ["tiny-streets"], "methods": ["ce"], "percents": [50], "seeds": [0]}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    settings = load_settings(path)
    [longer] = settings.schedule.runs()
    assert longer == Run("tiny-streets", "ce", 50, 0, 2) and longer.name == "ce-50-0-x2"
    assert settings.run(longer).train.iterations == 6 and settings.run(Run("tiny-streets", "ce", 50, 0)).train.iterations == 3
    path.write_text(yaml.safe_dump(params | {"schedule": params["schedule"] | schedule}))
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_settings(path)
    if schedule != {"factor": 1}:
        return
    path.write_text(yaml.safe_dump(params))  # the command trains the longer run where the layout says
    for name in ("data", "subsets"):
        shutil.copytree(tiny_workspace / name, tmp_path / name)
    result = run_cli(tmp_path, "train", "--dataset", "tiny-streets", "--method", "ce", "--percent", "50", "--seed", "0", "--schedule", "2")
    assert result.returncode == 0, result.stderr
    log = pd.read_csv(tmp_path / Layout(".").log(longer))
    assert len(log) == 6 and log["lr"].iloc[-1] > 0  # the learning rate decays over the 6 iterations
    refused = run_cli(tmp_path, "train", "--dataset", "tiny-streets", "--method", "ce", "--percent", "50", "--seed", "0", "--schedule", "0")
    assert refused.returncode == 2 and "--schedule: must be a positive integer, got 0" in refused.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("bench.repeats=0", "bench.repeats must be a positive integer, got 0"),
        ("bench.token_budget=-1", "bench.token_budget must be a non-negative integer, got -1"),
        ("bench.tokens=[]", "bench.tokens must be a non-empty list, got []"),
        ("bench.loader_datasets=[kitti]", "bench.loader_datasets names 'kitti', which is not under datasets"),
        ("bench.models=[{name: vit}]", "bench.models[0] must name a model"),
    ],
)
def test_invalid_bench_parameters_name_the_key(tmp_path, override, message):
    path = tmp_path / "params.yaml"
    default = yaml.safe_load((ROOT / "params.yaml").read_text())  # its bench section times the study's datasets
    path.write_text(yaml.safe_dump(TINY_PARAMS | {"bench": default["bench"], "datasets": TINY_PARAMS["datasets"] | default["datasets"]}))
    from paper_repro.tool_settings import load_bench

    assert load_bench(path).loader_datasets == ("synthetic-cityscapes", "synthetic-voc")  # the default bench section is valid
    load_settings(path, [override])  # the study's sections hold no rule of the bench's
    with pytest.raises(ParamsError) as error:
        load_bench(path, [override])
    assert message in str(error.value)


def test_bench_without_its_section_is_a_one_line_error(tiny_workspace):
    result = run_cli(tiny_workspace, "bench")
    assert result.returncode == 2 and "no bench: section" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_explains_itself(stage, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([stage, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert text.startswith(f"usage: python -m paper_repro {stage} [-h] preset" if stage == "preset" else
                           f"usage: python -m paper_repro {stage} [-h] [--params PARAMS] [--set KEY=VALUE]")
    assert STAGES[stage].help in text  # the stage's own description, whole
    expected = {"dataset": ["--dataset"], "run": ["--dataset", "--method", "--percent", "--seed", "--schedule"], "notebook": ["--name"],
                "launch": ["--status", "--no-wait"], None: [], "bench": [], "preset": [], "predict": ["--dataset", "--method", "--percent", "--seed", "--out"],
                "compare": ["--out"]}[STAGES[stage].target]
    offered = [option for option in ("--dataset", "--method", "--percent", "--seed", "--schedule", "--name", "--status", "--no-wait", "--out")
               if f"{option} " in text]
    assert offered == expected


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("a bug"), TypeError("a bug")], ids=lambda e: type(e).__name__)
def test_programming_errors_keep_their_traceback(tmp_path, monkeypatch, error):
    """Only the project's own errors and a missing or unreadable file are one-line user errors."""
    import paper_repro.report

    def broken(params):
        raise error

    monkeypatch.setattr(paper_repro.report, "report", broken)
    monkeypatch.chdir(tmp_path)  # not a DVC workspace: any parameter file may be named
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    with pytest.raises(type(error), match="a bug"):
        main(["report", "--params", str(tmp_path / "params.yaml")])


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--dataset", "kitti", "--method", "ce", "--percent", "10", "--seed", "0"], "unknown dataset 'kitti'"),
        (["train", "--dataset", "tiny-streets", "--method", "focal", "--percent", "10", "--seed", "0"], "unknown method 'focal'"),
        (["train", "--dataset", "tiny-streets", "--method", "ce", "--percent", "10", "--seed", "0"], "missing subset manifest subsets/tiny-streets/seed0/10.txt"),
        (["evaluate", "--dataset", "tiny-streets", "--method", "ce", "--percent", "50", "--seed", "7"], "missing trained model runs/tiny-streets/ce-50-7/model.pt"),
        (["report", "--set", "train.nonsense=1"], "train.nonsense: unknown parameter"),
        (["report", "--params", "missing.yaml"], "parameter file missing.yaml does not exist"),
        (["subsets", "--dataset", "tiny-streets", "--set", "study.percents=[0]"], "study.percents must be a non-empty list of integer percents"),
        (["generate", "--dataset", "tiny-streets", "--set", "methods.pals.tau=0"], "methods.pals.tau must be a positive number (the affinity temperature), got 0"),
    ],
)
def test_user_mistakes_end_in_one_line_errors(tiny_workspace, args, message):
    result = run_cli(tiny_workspace, *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_bad_percent_on_the_command_line_is_rejected(tiny_workspace):
    result = run_cli(tiny_workspace, "train", "--dataset", "tiny-streets", "--method", "ce", "--percent", "0", "--seed", "0")
    assert result.returncode == 2 and "must be an integer percent in (0, 100]" in result.stderr and "Traceback" not in result.stderr


def test_generated_dataset_must_live_in_its_stage_folder(tiny_workspace):
    result = run_cli(tiny_workspace, "generate", "--dataset", "tiny-streets", "--set", "datasets.tiny-streets.root=elsewhere")
    assert result.returncode == 2 and "root must be data/tiny-streets" in result.stderr


def test_dvc_pipeline_expands_to_the_full_study():
    result = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=ROOT, capture_output=True, text=True, env=DVC_ENV)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    settings = load_settings(ROOT / "params.yaml")
    study = settings.study
    assert sorted(name for name in names if name.startswith("run")) == sorted(
        [f"runs@{dataset}" for dataset in study.datasets] + ["runs-scaled@synthetic-cityscapes"])
    assert "report" in names
    # the launcher's runs are those of the study's grid, the sweep, the schedule and the scale checks, each in its dataset's stage
    from paper_repro.launch import stages_of

    stages = stages_of(settings)
    grids = [study, settings.ablation, settings.schedule, settings.scale]
    assert len(stages) == sum(len(grid.datasets) * len(grid.methods) * len(grid.percents) * len(grid.seeds) for grid in grids)
    assert all(stage == f"runs@{run.dataset}" for run, stage in stages.items() if not run.dataset.endswith("-x2"))
    assert stages[Run("synthetic-cityscapes-x2", "pals", 30, 2)] == "runs-scaled@synthetic-cityscapes"
    assert Run("synthetic-cityscapes", "pals", 10, 0) in stages and Run("synthetic-cityscapes", "ce", 30, 1, 2) in stages


@pytest.mark.parametrize("path", PARAMETER_FILES, ids=lambda p: p.name)
def test_pipeline_resolves_with_every_parameter_file(tmp_path, path):
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    write_preset(path, tmp_path / "params.yaml")  # params.yaml as it is, a preset merged over it
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=DVC_ENV)
    result = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=tmp_path, capture_output=True, text=True, env=DVC_ENV)
    assert result.returncode == 0, result.stderr
    settings = load_settings(tmp_path / "params.yaml")
    notebooks = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["notebooks"]["foreach"]
    expected = {f"{stage}@{dataset}" for stage in ("generate", "subsets", "runs", "explain") for dataset in settings.study.datasets}
    expected |= {f"{stage}-scaled@{settings.dataset(dataset).scaled_from}" for stage in ("generate", "subsets", "runs")
                 for dataset in (settings.scale.datasets if settings.scale else ())}
    expected |= {"pretrain", "report"} | {f"notebooks@{name}" for name in notebooks}
    assert {line.split()[0] for line in result.stdout.splitlines() if line.strip()} == expected


def test_bench_writes_its_schema_on_a_tiny_size(tiny_workspace):
    tiny = {"tokens": [16, 64], "naive_max_tokens": 64, "token_budget": 16, "dim": 8, "classes": [3], "batch": 2, "repeats": 2, "step_repeats": 2,
            "models": [{"name": "deeplabv3plus_small", "size": [32, 32], "batch": 2, "classes": 5},
                       {"name": "deeplabv3plus_small", "dataset": "tiny-streets"}],
            "loader_datasets": ["tiny-streets", "tiny-objects"], "loader_batches": 4}
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text()) | {"bench": tiny}
    # a dataset not generated yet: the bench generates a temporary copy to time its loader
    params["datasets"]["tiny-objects"] = {
        "kind": "voc", "root": "data/tiny-objects", "num_classes": 21, "train_split": "train", "eval_split": "val",
        "generate": {"n_train": 4, "n_val": 2, "height": 32, "width": 32, "seed": 0},
        "base_size": 32, "scale_range": [0.75, 1.25], "crop": [32, 32]}
    (tiny_workspace / "bench.yaml").write_text(yaml.safe_dump(params))
    result = run_cli(tiny_workspace, "bench", "--params", "bench.yaml")
    assert result.returncode == 0, result.stderr
    assert not (tiny_workspace / "data" / "tiny-objects").exists()
    report = yaml.safe_load((tiny_workspace / "results" / "bench" / "bench_cpu.json").read_text())
    assert {"torch", "device", "threads", "name"} <= set(report["device"])
    assert [(r["variant"], r["n"]) for r in report["aggregation"]] == [
        ("naive", 16), ("fused", 16), ("naive", 64), ("fused", 64), ("fused_pooled", 64)]
    # every ratio is the ratio of the medians (and peaks) the report gives, at the same N and K
    by_case = {(r["variant"], r["n"]): r for r in report["aggregation"]}
    for (variant, n), row in by_case.items():
        if variant != "naive":
            reference = by_case[({"fused": "naive", "fused_pooled": "fused"}[variant], n)]
            name = reference["variant"]
            assert row[f"time_ratio_vs_{name}"] == round(row["median_s"] / reference["median_s"], 3)
            assert row[f"memory_ratio_vs_{name}"] == round(row["peak_mb"] / max(reference["peak_mb"], 1e-6), 4)
    assert all(r["token_budget"] == 16 for r in report["aggregation"] if r["variant"] == "fused_pooled")
    assert [(r["method"], r["size"], r["batch"], r["classes"]) for r in report["steps"]] == [
        (m, [32, 32], 2, 5) for m in ("ce", "ls", "pals")] + [(m, [32, 64], 2, 19) for m in ("ce", "ls", "pals")]
    assert [r["time_ratio_vs_ce"] for r in report["steps"] if r["method"] == "ce"] == [1.0, 1.0]
    assert [r["dataset"] for r in report["loader"]] == ["tiny-streets", "tiny-objects"]
    loader = report["loader"][0]
    assert loader["batch"] == 2 and loader["pals_step_median_s"] == report["steps"][-1]["median_s"]  # the pals step at its size
    assert loader["loader_share_of_iteration"] == round(loader["median_s"] / (loader["median_s"] + loader["pals_step_median_s"]), 3)
    assert [r["time_ratio_vs_ce"] for r in report["steps"][3:]] == [round(r["median_s"] / report["steps"][3]["median_s"], 3) for r in report["steps"][3:]]
    assert "pals_step_median_s" not in report["loader"][1]  # no step case at that dataset's size
    # the fused cases name their kernel (the CPU's flash kernel: the math kernel is excluded), in float32 on the CPU
    assert {r.get("kernel") for r in report["aggregation"]} == {None, "flash_attention"}
    assert all(("kernel" in r) == (r["variant"] != "naive") for r in report["aggregation"])
    assert {r["precision"] for r in report["aggregation"]} == {"float32"}
    # every case is logged as it starts and as it ends: 5 aggregation, 2 x (1 timing + 3 memory) step, 2 loader cases
    logged = [line.split("INFO bench ", 1)[1] for line in result.stderr.splitlines() if "INFO bench " in line]
    assert [line.split(":")[0] for line in logged] == [f"{i}/15" for i in range(1, 16) for _ in "se"]
    assert all(("done in" in line) == (index % 2 == 1) for index, line in enumerate(logged))
    assert logged[-1].startswith("15/15: training loader tiny-objects done in")


def test_a_dataset_may_set_its_own_train_settings(tmp_path, tiny_workspace):
    """``datasets.<name>.train`` replaces entries of ``train`` for that dataset's runs, validated alike."""
    spec = TINY_PARAMS["datasets"]["tiny-streets"]
    params = TINY_PARAMS | {"datasets": {"tiny-streets": spec | {"train": {"iterations": 3}}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    settings = load_settings(path).train_of("tiny-streets")
    assert vars(settings) == TINY_PARAMS["train"] | {"iterations": 3}
    for override, message in (("{iterations: 0}", "datasets.tiny-streets.train.iterations must be a positive integer, got 0"),
                              ("{checkpoint_every: 0}", "datasets.tiny-streets.train.checkpoint_every must be a positive integer, got 0"),
                              ("{amp: fp8}", "datasets.tiny-streets.train.amp must be one of off, bf16, fp16, got 'fp8'"),
                              ("{epochs: 3}", "datasets.tiny-streets.train must be a mapping of train settings")):
        with pytest.raises(ParamsError, match=re.escape(message)):
            load_settings(path, [f"datasets.tiny-streets.train={override}"])

    for name in ("data", "subsets"):
        shutil.copytree(tiny_workspace / name, tmp_path / name)
    result = run_cli(tmp_path, "train", "--dataset", "tiny-streets", "--method", "ce", "--percent", "50", "--seed", "0")
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / Layout(".").log(Run("tiny-streets", "ce", 50, 0))).read_text().splitlines()) == 1 + 3


def test_a_preset_is_an_overlay_that_dvc_records_as_the_effective_values(tmp_path):
    """A preset gives only what it changes; `preset` writes the merge into params.yaml, where DVC sees
    the switch; a second preset over an already-switched params.yaml is refused."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    env = DVC_ENV | {"PYTHONPATH": str(ROOT)}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "."],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(command, cwd=tmp_path, check=True, env=env)
    base, overlay = read_params(tmp_path / "params.yaml"), yaml.safe_load((ROOT / "presets" / "cityscapes.yaml").read_text())
    assert "methods" not in overlay and "pretrain" not in overlay  # said once, in the base
    assert read_params(tmp_path / "presets" / "cityscapes.yaml")["methods"] == base["methods"]
    assert read_params(tmp_path / "presets" / "cityscapes.yaml")["train"] == base["train"] | overlay["train"]  # merged key by key

    switched = run_cli(tmp_path, "preset", "presets/cityscapes.yaml")
    assert switched.returncode == 0, switched.stderr
    diff = json.loads(subprocess.run([sys.executable, "-m", "dvc", "params", "diff", "--json"], cwd=tmp_path, env=env,
                                     capture_output=True, text=True, check=True).stdout)["params.yaml"]
    assert diff["study.datasets"] == {"old": "['synthetic-cityscapes', 'synthetic-voc']", "new": "['cityscapes']"}  # as DVC shows lists
    assert diff["model.name"]["new"] == "deeplabv3plus_resnet101" and diff["train.iterations"]["new"] == 80000
    assert "methods.pals.tau" not in diff
    assert load_settings(tmp_path / "params.yaml") == load_settings(tmp_path / "presets" / "cityscapes.yaml")

    again = run_cli(tmp_path, "preset", "presets/voc.yaml")
    assert again.returncode == 2 and "already holds the effective values of preset presets/cityscapes.yaml" in again.stderr


def test_in_a_dvc_workspace_stage_commands_refuse_parameters_dvc_does_not_record(tmp_path):
    """``--set methods.pals.tau=0.3`` would write runs/<dataset>/pals-... with another tau than DVC records."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    shutil.copy(tmp_path / "params.yaml", tmp_path / "other.yaml")
    run = ["train", "--dataset", "tiny-streets", "--method", "pals", "--percent", "50", "--seed", "0"]
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    for extra, named in ((["--set", "methods.pals.tau=0.3"], "--set methods.pals.tau=0.3"), (["--params", "other.yaml"], "--params other.yaml")):
        result = run_cli(tmp_path, *run, *extra)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
            f"error: {named}: in this DVC workspace the train stage writes outputs dvc.yaml tracks, made from params.yaml; "
            "run `dvc exp run -S key=value` (or edit params.yaml, or work in a copy without dvc.yaml)")
    # settings that change no output pass (here the run then stops on its missing manifest), as does any override without dvc.yaml
    neutral = run_cli(tmp_path, *run, "--set", "train.workers=1", "--set", "train.checkpoint_every=3")
    assert neutral.returncode == 2 and "missing subset manifest" in neutral.stderr
    (tmp_path / "dvc.yaml").unlink()
    elsewhere = run_cli(tmp_path, *run, "--set", "methods.pals.tau=0.3")
    assert elsewhere.returncode == 2 and "missing subset manifest" in elsewhere.stderr
