"""The configs in cluster/ cannot rot: they parse, name job scripts that exist, and pass only flags those
scripts' real parser accepts (the parser is run, not pattern-matched), with images pinned to our Ray."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import typer
import yaml

from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CONFIGS = sorted([*CLUSTER.glob("*.yaml"), *CLUSTER.glob("*.yml")])
JOBS = sorted(p.stem for p in (ROOT / "jobs").glob("*.py"))
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
BASE_IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"
DOCKERFILE = CLUSTER / "Dockerfile"
REQUIREMENTS = CLUSTER / "requirements.txt"
CONSTRAINTS = ROOT / "constraints.txt"


def documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def walk(node, key=None):
    """Every (key, value) pair in a parsed YAML tree; runtimeEnvYAML strings are parsed and walked too."""
    if isinstance(node, dict):
        for k, value in node.items():
            yield from walk(value, k)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)
    else:
        yield key, node
        if key == "runtimeEnvYAML":
            yield from walk(yaml.safe_load(node))


def job_commands(text: str) -> list[tuple[str, list[str]]]:
    """(script path, arguments) of every `... jobs/NAME.py ARGS` command in a shell text."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token not in SEPARATORS:
                segment.append(token)
                continue
            for i, word in enumerate(segment):
                if word.endswith(".py") and "jobs/" in word:
                    commands.append((word[word.index("jobs/"):], segment[i + 1:]))
                    break
            segment = []
    return commands


def config_job_commands(path: Path) -> list[tuple[str, list[str]]]:
    return [command for doc in documents(path) for _, value in walk(doc) if isinstance(value, str)
            for command in job_commands(value)]


def parse_with_job_parser(script: str, args: list[str]) -> None:
    """Run the parser jobs/NAME.py runs (the `pipeline NAME` command) on ARGS, without running the job."""
    command = typer.main.get_command(app).commands[Path(script).stem]
    with command.make_context(script, list(args), resilient_parsing=False):
        pass


def test_the_config_folder_is_not_empty():
    names = {p.name for p in CONFIGS}
    assert {"aws-gpu.yaml", "ray-cluster.gpu.yaml", "ray-job.label.yaml", "ray-job.finetune.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path):
    docs = documents(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)
    for key, value in (pair for doc in docs for pair in walk(doc)):
        if key == "runtimeEnvYAML":
            assert isinstance(yaml.safe_load(value), dict)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_job_commands_name_real_scripts_and_real_flags(path):
    commands = config_job_commands(path)
    if path.name.startswith("ray-job."):
        assert commands, f"{path.name} is a RayJob but no 'python jobs/NAME.py ...' entrypoint was found"
        assert {Path(script).stem for script, _ in commands} == {path.name.split(".")[1]}
    for script, args in commands:
        assert (ROOT / script).is_file(), f"{path.name} runs {script}, which does not exist"
        try:
            parse_with_job_parser(script, args)
        except typer.TyperException as err:
            pytest.fail(f"{path.name}: '{script} {shlex.join(args)}' is refused by its parser: "
                        f"{err.format_message() if hasattr(err, 'format_message') else err}")


def test_every_job_script_has_a_cluster_config():
    covered = {Path(script).stem for path in CONFIGS for script, _ in config_job_commands(path)}
    assert covered == set(JOBS) and covered >= {"label", "finetune"}


def test_a_renamed_flag_would_fail_the_check():
    """Guard against a vacuous check: the same extraction and parser refuse a flag the job does not have."""
    [(script, args)] = job_commands("cd /app && TF_CPP_MIN_LOG_LEVEL=2 python jobs/label.py \\\n s3://b/in s3://b/out "
                                    "--top-kk 5 | tee log")
    assert (script, args) == ("jobs/label.py", ["s3://b/in", "s3://b/out", "--top-kk", "5"])
    with pytest.raises(typer.TyperException, match="--top-kk"):
        parse_with_job_parser(script, args)
    with pytest.raises(typer.TyperException):
        parse_with_job_parser("jobs/finetune.py", ["data", "out", "--workers", "two"])
    parse_with_job_parser("jobs/finetune.py", ["data", "out", "--workers", "2"])


def test_every_node_runs_the_one_image_built_from_the_pinned_ray_image():
    images = {(path.name, value) for path in CONFIGS for doc in documents(path)
              for key, value in walk(doc) if key == "image"}
    assert {name for name, _ in images} == {p.name for p in CONFIGS}
    [image] = {image for _, image in images}
    assert f"-t {image} ." in DOCKERFILE.read_text(), "the configs must pull the image cluster/Dockerfile builds"
    froms = [line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("FROM ")]
    assert froms == [BASE_IMAGE]
    versions = {value for path in CONFIGS for doc in documents(path) for key, value in walk(doc) if key == "rayVersion"}
    assert versions == {ray.__version__}


def _pins(path: Path) -> dict[str, str]:
    """{normalized name: version} of every ``name==version`` line (extras and comments dropped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" in line, f"{path.name}: '{line}' is not pinned with =="
            name, pinned = line.split("==")
            pins[_normalized(name.split("[")[0])] = pinned.strip()
    return pins


def _normalized(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def test_the_image_pins_the_versions_the_tests_run_with():
    """The node image installs what the tests ran with: every pin in cluster/requirements.txt is the one in
    constraints.txt (which the README's commands install with) and the installed version; and every runtime
    dependency of the package is pinned there, since the image installs the package with --no-deps."""
    import tomllib
    from importlib.metadata import version

    image, tested = _pins(REQUIREMENTS), _pins(CONSTRAINTS)
    for name, pinned in image.items():
        assert tested.get(name) == pinned, f"cluster/requirements.txt pins {name}=={pinned}, constraints.txt {tested.get(name)}"
        assert version(name) == pinned, f"cluster/requirements.txt pins {name}=={pinned}, the tests run {version(name)}"
    for name, pinned in tested.items():
        assert version(name) == pinned, f"constraints.txt pins {name}=={pinned}, the tests run {version(name)}"
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = {_normalized(re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0]) for dep in runtime}
    assert needed - {"ray"} <= set(image), f"missing from cluster/requirements.txt: {sorted(needed - {'ray'} - set(image))}"
    assert "ray" not in image  # it comes from the base image, at the client's version
    assert "requirements.txt" in DOCKERFILE.read_text() and "--no-deps" in DOCKERFILE.read_text()


def test_the_readme_commands_and_ci_install_with_the_constraints():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in readme[:8] if line.startswith("python3 -m venv")]
    assert len(commands) == 2 and all("pip install -q -c constraints.txt -e" in c for c in commands), commands
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith("ray-")], ids=lambda p: p.name)
def test_kuberay_gpu_workers_autoscale_and_jobs_clean_up(path):
    doc = documents(path)[0]
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    [gpu] = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in
             g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    for group in spec["workerGroupSpecs"]:  # idle decode workers are kept, not restarted per task
        container = group["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        cpus = float(container["resources"]["limits"]["cpu"])
        assert int(env.get("RAY_num_workers_soft_limit", 0)) >= 4 * cpus, group["groupName"]
    if doc["kind"] == "RayJob":
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
        assert "pip" not in runtime_env and "working_dir" not in runtime_env  # both are in the image


def test_the_aws_cluster_signs_s3_reads_for_its_own_region():
    """Without a region, image reads go through s3fs (pipeline/s3_reads.py): 4x the CPU per GET."""
    config = documents(CLUSTER / "aws-gpu.yaml")[0]
    region = config["provider"]["region"]
    for command in [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]:
        if "ray start" in command:
            assert f"AWS_DEFAULT_REGION={region} " in command, command
