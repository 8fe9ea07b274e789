"""launch/: the cluster-launcher YAML against Ray's own schema, the KubeRay RayJob against the fields KubeRay
requires (and its CRD schema when one is given), and the shell scripts without starting Ray."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray._private.runtime_env.packaging import create_package
from ray.autoscaler._private.util import prepare_config, validate_config

PROJECT = Path(__file__).resolve().parents[1]
LAUNCH = PROJECT / "launch"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


def load_yaml(name: str) -> dict:
    return yaml.safe_load((LAUNCH / name).read_text())


# ---------------------------------------------------------------------------------------------------
# cluster.yaml: Ray's cluster-config schema (ray/autoscaler/ray-schema.json), then what `ray up` does
# offline: fill in the provider's defaults and validate again (validate_config adds cross-field checks).


def check_cluster_config(config: dict) -> None:
    jsonschema.validate(config, json.loads(RAY_SCHEMA.read_text()))
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_matches_ray_schema():
    check_cluster_config(load_yaml("cluster.yaml"))


def _drop(key):
    def edit(config):
        del config[key]

    return edit


def _set(path, value):
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _drop_node_resources(config):
    del config["available_node_types"]["gpu_a10g"]["resources"]


def _drop_provider_type(config):
    del config["provider"]["type"]


def _min_workers_above_max_workers(config):
    config["max_workers"] = 1
    config["available_node_types"]["gpu_a10g"]["min_workers"] = 2


@pytest.mark.parametrize(
    "edit, error",
    [
        (_drop("provider"), jsonschema.ValidationError),
        (_drop("cluster_name"), jsonschema.ValidationError),
        (_drop_provider_type, jsonschema.ValidationError),
        (_set(["unknown_top_level_key"], 1), jsonschema.ValidationError),
        (_set(["max_workers"], "five"), jsonschema.ValidationError),
        (_drop_node_resources, jsonschema.ValidationError),
        (_set(["head_node_type"], "no_such_type"), ValueError),
        (_min_workers_above_max_workers, ValueError),
    ],
    ids=[
        "no-provider",
        "no-cluster_name",
        "no-provider-type",
        "unknown-key",
        "max_workers-type",
        "node-without-resources",
        "head_node_type-unknown",
        "min_workers-above-max_workers",
    ],
)
def test_broken_cluster_yaml_is_rejected(edit, error):
    config = load_yaml("cluster.yaml")
    edit(config)
    with pytest.raises(error):
        check_cluster_config(config)


def test_cluster_yaml_gpu_workers_and_setup():
    config = load_yaml("cluster.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu_types = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu_types and all(t["resources"].get("GPU", 0) >= 1 for t in gpu_types)
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in gpu_types)
    setup = "\n".join(config["setup_commands"])
    assert "torch==" in setup and "-e ~/distgnn" in setup and "ray[default,train]==" in setup
    assert config["file_mounts"]["/home/ubuntu/distgnn"] == "."
    for folder in ("/data/", "/runs/", "/exports/", "/benchmarks/out/", ".git/"):
        assert folder in config["rsync_exclude"]
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])


# ---------------------------------------------------------------------------------------------------
# rayjob.yaml: no RayJob CRD ships in a pip package, so the fields KubeRay requires are checked here;
# KUBERAY_RAYJOB_CRD=path/to/ray.io_rayjobs.yaml (kuberay: ray-operator/config/crd/bases/) adds the CRD.


def rayjob_problems(doc: dict) -> list[str]:
    """What KubeRay would refuse, or what this project needs, in a RayJob manifest; [] when fine."""
    problems = []

    def get(path: str):
        node = doc
        for key in path.split("."):
            if isinstance(key, str) and key.isdigit():
                key = int(key)
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                problems.append(f"missing {path}")
                return None
        return node

    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r}, expected ray.io/v1")
    if doc.get("kind") != "RayJob":
        problems.append(f"kind {doc.get('kind')!r}, expected RayJob")
    get("metadata.name")
    entrypoint = get("spec.entrypoint")
    if entrypoint is not None and not entrypoint.startswith("python -m distgnn.train "):
        problems.append("spec.entrypoint does not run python -m distgnn.train")
    if get("spec.shutdownAfterJobFinishes") is not True:
        problems.append("spec.shutdownAfterJobFinishes is not true")
    ttl = get("spec.ttlSecondsAfterFinished")
    if ttl is not None and not (isinstance(ttl, int) and ttl >= 0):
        problems.append("spec.ttlSecondsAfterFinished is not a non-negative integer")
    runtime_env = get("spec.runtimeEnvYAML")
    if runtime_env is not None:
        try:
            if not isinstance(yaml.safe_load(runtime_env), dict):
                problems.append("spec.runtimeEnvYAML is not a YAML mapping")
        except yaml.YAMLError as err:
            problems.append(f"spec.runtimeEnvYAML is not valid YAML: {err}")
    get("spec.rayClusterSpec.headGroupSpec.rayStartParams")
    get("spec.rayClusterSpec.headGroupSpec.template.spec.containers.0.image")
    groups = get("spec.rayClusterSpec.workerGroupSpecs") or []
    if not groups:
        problems.append("no workerGroupSpecs")
    gpus = 0
    for i, group in enumerate(groups):
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "template", "rayStartParams"):
            if key not in group:
                problems.append(f"workerGroupSpecs[{i}] has no {key}")
        if (
            all(isinstance(group.get(k), int) for k in ("replicas", "minReplicas", "maxReplicas"))
            and not group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        ):
            problems.append(f"workerGroupSpecs[{i}]: replicas outside [minReplicas, maxReplicas]")
        for container in group.get("template", {}).get("spec", {}).get("containers", []):
            resources = container.get("resources", {})
            limit = resources.get("limits", {}).get("nvidia.com/gpu")
            request = resources.get("requests", {}).get("nvidia.com/gpu", limit)
            if limit is not None:
                if request != limit:
                    problems.append(f"workerGroupSpecs[{i}]: nvidia.com/gpu requests != limits")
                gpus += int(limit)
            if not container.get("image"):
                problems.append(f"workerGroupSpecs[{i}]: a container without image")
    if groups and not gpus:
        problems.append("no worker group requests nvidia.com/gpu")
    return problems


def test_rayjob_has_what_kuberay_requires():
    doc = load_yaml("rayjob.yaml")
    assert rayjob_problems(doc) == []
    entrypoint = doc["spec"]["entrypoint"]
    assert "--run.storage s3://" in entrypoint and "--cluster.use_gpu true" in entrypoint
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert "DISTGNN_BASE_DIR" not in env.get("env_vars", {})
    secrets = [
        e
        for c in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if "valueFrom" in e
    ]
    assert {e["name"] for e in secrets} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def _drop_worker_key(key):
    def edit(doc):
        del doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0][key]

    return edit


def _drop_gpu(doc):
    for container in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]:
        for part in ("requests", "limits"):
            container["resources"][part].pop("nvidia.com/gpu")


def _break_runtime_env(doc):
    doc["spec"]["runtimeEnvYAML"] = "env_vars: {A: [1"


def _drop_head_image(doc):
    del doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]


@pytest.mark.parametrize(
    "edit",
    [
        _drop_worker_key("groupName"),
        _drop_worker_key("maxReplicas"),
        _drop_worker_key("rayStartParams"),
        _drop_gpu,
        _break_runtime_env,
        _drop_head_image,
    ],
    ids=["no-groupName", "no-maxReplicas", "no-rayStartParams", "no-gpu", "runtimeEnvYAML-invalid", "no-head-image"],
)
def test_broken_rayjob_is_rejected(edit):
    doc = load_yaml("rayjob.yaml")
    edit(doc)
    assert rayjob_problems(doc)


def unknown_fields(doc, schema: dict, path: str = "") -> list[str]:
    """Keys the CRD does not declare (the API server would drop them: a misspelt field is lost silently)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema:
        return []
    found = []
    if isinstance(doc, dict) and "properties" in schema:
        for key, value in doc.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
    elif isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def test_rayjob_matches_kuberay_crd():
    crd_path = os.environ.get("KUBERAY_RAYJOB_CRD")
    if not crd_path:
        pytest.skip("set KUBERAY_RAYJOB_CRD to kuberay's ray-operator/config/crd/bases/ray.io_rayjobs.yaml")
    crd = yaml.safe_load(Path(crd_path).read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    doc = load_yaml("rayjob.yaml")
    jsonschema.Draft7Validator(schema).validate(doc)
    assert unknown_fields(doc, schema) == []
    doc["spec"]["shutdownAfterJobFinish"] = True
    assert unknown_fields(doc, schema) == [".spec.shutdownAfterJobFinish"]


def test_rayjob_entrypoint_flags_are_train_flags():
    """The entrypoint parses as `python -m distgnn.train` flags and builds a valid config (the image's
    /home/ray/distgnn is this folder)."""
    from distgnn.core.config import TrainJobConfig, config_from_args, make_parser

    argv = shlex.split(load_yaml("rayjob.yaml")["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "distgnn.train"]
    argv = [a.replace("/home/ray/distgnn/", f"{PROJECT}/") for a in argv[3:]]
    args, unknown = make_parser(TrainJobConfig, description="", prog="distgnn.train").parse_known_args(argv)
    if unknown == ["--run.storage", "s3://my-distgnn-bucket/runs"]:
        pytest.xfail("train has no --run.storage yet")
    assert unknown == [], f"not train flags: {unknown}"
    job = config_from_args(TrainJobConfig, args)
    assert job.cluster.use_gpu == "true"


# ---------------------------------------------------------------------------------------------------
# The scripts, without Ray: syntax, --help, and what submit.sh would upload (--dry-run + Ray's own
# packaging function, the one `ray job submit --working-dir` calls).


@pytest.mark.parametrize("script", ["start_cluster.sh", "submit.sh"])
def test_script_syntax_and_help(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)
    out = subprocess.run(["bash", str(LAUNCH / script), "--help"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("Start a Ray head" if script == "start_cluster.sh" else "Submit ")
    assert "RAY_AUTH_MODE" in out.stdout


def test_start_cluster_refuses_unknown_arguments():
    out = subprocess.run(["bash", str(LAUNCH / "start_cluster.sh"), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown argument '--bogus'" in out.stderr


def dry_run(project: Path, *args: str, cwd: Path | None = None) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISTGNN_BASE_DIR", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    out = subprocess.run(
        ["bash", str(project / "launch" / "submit.sh"), "--dry-run", *args],
        cwd=cwd or project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    argv = shlex.split(out.stdout)
    return argv, json.loads(argv[argv.index("--runtime-env-json") + 1])


def package_names(project: Path, runtime_env: dict, tmp_path: Path) -> tuple[set[str], int]:
    zip_path = tmp_path / "package.zip"
    # RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 in the command line = include_gitignore=False
    create_package(str(project), zip_path, include_gitignore=False, excludes=runtime_env["excludes"])
    with zipfile.ZipFile(zip_path) as z:
        return {n.rstrip("/") for n in z.namelist()}, zip_path.stat().st_size


def test_submit_uploads_code_without_data_runs_or_venvs(tmp_path):
    project = tmp_path / "proj"
    files = {
        "keep": [
            "launch/submit.sh",
            "distgnn/__init__.py",
            "distgnn/data/graph.py",
            "configs/a.yaml",
            "benchmarks/bench.py",
            "tests/data/tiny.csv",
            "README.md",
        ],
        "drop": [
            "data/big/blob.bin",
            "runs/r1/model.pt",
            "exports/e/manifest.json",
            "benchmarks/out/a.json",
            ".git/HEAD",
            "distgnn.egg-info/PKG-INFO",
            "distgnn/__pycache__/a.pyc",
            ".venv/bin/python",
            "myenv/pyvenv.cfg",
            "myenv/lib/site.py",
            "tools/env2/pyvenv.cfg",
            "tools/env2/bin/python",
            "x.tmp-123/part",
        ],
    }
    for name in files["keep"] + files["drop"]:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    shutil.copy(LAUNCH / "submit.sh", project / "launch" / "submit.sh")
    (project / ".gitignore").write_text("data/\nruns/\n")  # unanchored, as the project's: must not apply

    argv, runtime_env = dry_run(project, "--run.output_dir", "runs/x", "--run.name", "a b")
    assert argv[0] == "RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1" and argv[1:4] == ["ray", "job", "submit"]
    assert argv[argv.index("--working-dir") + 1] == str(project.resolve())
    assert argv[argv.index("--address") + 1] == "http://127.0.0.1:8265"
    assert argv[argv.index("--") + 1 :] == [
        "python",
        "-m",
        "distgnn.train",
        "--run.output_dir",
        "runs/x",
        "--run.name",
        "a b",
    ]
    assert runtime_env["env_vars"] == {"DISTGNN_BASE_DIR": str(project.resolve())}

    names, _ = package_names(project, runtime_env, tmp_path)
    assert set(files["keep"]) <= names
    assert not set(files["drop"]) & names
    assert not {n for n in names if n.split("/")[0] in ("data", "runs", "exports", "myenv", ".venv", ".git")}


def test_submit_base_dir_from_environment_and_other_cwd(tmp_path, monkeypatch):
    base = tmp_path / "elsewhere"
    base.mkdir()
    monkeypatch.setenv("DISTGNN_BASE_DIR", str(base))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(
        ["bash", str(LAUNCH / "submit.sh"), "--dry-run"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    argv = shlex.split(out.stdout)
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert runtime_env["env_vars"]["DISTGNN_BASE_DIR"] == str(base.resolve())
    assert argv[argv.index("--working-dir") + 1] == str(PROJECT)
    assert "relative paths resolve against" in out.stderr


def test_submit_remote_sets_no_base_dir():
    argv, runtime_env = dry_run(PROJECT, "--remote", "--run.storage", "s3://b/runs")
    assert runtime_env["env_vars"] == {}
    assert argv[argv.index("--") + 1 :] == ["python", "-m", "distgnn.train", "--run.storage", "s3://b/runs"]


def test_submit_package_of_this_project_is_small(tmp_path):
    _, runtime_env = dry_run(PROJECT)
    names, size = package_names(PROJECT, runtime_env, tmp_path)
    assert "distgnn/train.py" in names
    assert not {n for n in names if n.split("/")[0] in ("data", "runs", "exports", ".git")}
    assert size < 5 * 2**20, f"package of {size / 2**20:.1f} MiB: something big is uploaded"
