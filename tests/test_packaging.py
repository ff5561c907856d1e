"""environment.yml mirrors pyproject.toml; .ci/run runs the README's test command."""

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_TO_PYPI = {"pytorch": "torch"}


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pypi = {requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {
        CONDA_TO_PYPI.get(requirement_name(d), requirement_name(d))
        for d in environment["dependencies"]
        if isinstance(d, str) and requirement_name(d) not in ("python", "pip")
    }
    assert conda == pypi


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    assert command in ci


def test_license_and_citation_match_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert project["license"]["text"] == "MIT" == citation["license"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert citation["version"] == project["version"]
    assert citation["preferred-citation"]["doi"] == "10.3390/s22072623"
    assert "doi.org/10.3390/s22072623" in (ROOT / "README.md").read_text()


def test_the_repository_cites_no_file_outside_it():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    texts = [ROOT / path for path in tracked if path.endswith((".py", ".md", ".yaml", ".ipynb", ".cff", ".toml"))
             and not path.startswith(("notebooks/", "results/"))]
    outside = ("DESIGN" ".md", "../" "shared")  # spelled apart so that this file does not cite them
    for path in texts:
        assert not any(name in path.read_text() for name in outside), path
    cited = {match for path in texts for match in re.findall(r"docs/[\w./-]+\.md", path.read_text())}
    assert cited and all((ROOT / name).is_file() for name in cited), cited
