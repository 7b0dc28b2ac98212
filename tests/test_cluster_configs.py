"""cluster/: the AWS launcher config, the KubeRay manifests and the job runtime_env.

Checked offline: the launcher YAML against the JSON schema Ray ships and Ray's own
``prepare_config`` / ``validate_config`` (no AWS call), the KubeRay manifests against the
fields KubeRay requires, the job entrypoints against the commands the cluster guide documents and
the flags the job scripts define, and every file for credentials. One test submits a job
with cluster/runtime_env.yaml to a real local Ray cluster.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from ncsn_ray import configs

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
AWS_YAML = CLUSTER / "aws.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
KUBERAY = CLUSTER / "kuberay"
RAYCLUSTER = KUBERAY / "raycluster.yaml"
RAYJOBS = {"train": KUBERAY / "rayjob-train.yaml", "generate": KUBERAY / "rayjob-generate.yaml"}

# The cloud workflow, as documented in docs/guide/cluster.md (the README links to it). The
# RayJob entrypoints must be exactly these strings.
BUCKET = "s3://my-ncsn-bucket"
EXPECTED_COMMANDS = {
    "prepare": f"python jobs/prepare_data.py --dataset cifar10 --out {BUCKET}/datasets/cifar10",
    "train": (
        f"python jobs/train.py --config cifar10 --data {BUCKET}/datasets/cifar10"
        f" --storage {BUCKET}/runs --name ncsn-cifar10 --num-workers 4 --use-gpu"
    ),
    "generate": (
        f"python jobs/generate.py --checkpoint {BUCKET}/runs/ncsn-cifar10 --n 50000"
        f" --out {BUCKET}/samples/ncsn-cifar10 --batch-size 500 --min-actors 1 --max-actors 4"
        " --use-gpu --seed 0"
    ),
    "evaluate": (
        f"python jobs/evaluate.py --samples {BUCKET}/samples/ncsn-cifar10"
        f" --reference {BUCKET}/datasets/cifar10 --metrics fid,isc,kid"
    ),
}

SECRET_KEY_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE")
SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # an AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{16,}"),
    re.compile(r"(?i)aws_session_token\s*[:=]\s*['\"]?\S{16,}"),
    re.compile(r"(?i)\b(password|passwd)\s*[:=]\s*['\"]?\S{4,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)bearer\s+[a-f0-9]{32,}"),
]


def load(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def ray_version() -> str:
    import ray

    return ray.__version__


# --------------------------------------------------------------------------- secrets


def cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file())


def test_cluster_folder_has_the_expected_files():
    names = {p.relative_to(CLUSTER).as_posix() for p in cluster_files()}
    assert {"aws.yaml", "runtime_env.yaml", "Dockerfile", "kuberay/raycluster.yaml"} <= names
    assert {"kuberay/rayjob-train.yaml", "kuberay/rayjob-generate.yaml"} <= names


@pytest.mark.parametrize("path", cluster_files(), ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_no_credentials_in_cluster_files(path):
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"{path.name}: looks like a credential ({pattern.pattern})"


def secret_looking(key: str) -> bool:
    return any(word in key.upper() for word in SECRET_KEY_WORDS)


# --------------------------------------------------------------------------- AWS launcher


@pytest.fixture(scope="module")
def aws():
    return load(AWS_YAML)


def test_aws_yaml_matches_rays_json_schema(aws):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(aws, schema)


def test_aws_yaml_passes_rays_own_config_preparation(aws):
    import jsonschema  # noqa: F401 - validate_config needs it
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(aws))  # merges Ray's AWS defaults; no AWS call
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["max_workers"] == 0
    # Every node checks that the image holds this project; nothing is installed at boot.
    assert any("import ray, torch, ncsn_core, ncsn_ray" in c for c in prepared["head_setup_commands"])
    assert not any("pip install" in c for c in prepared["setup_commands"])


def test_aws_head_runs_no_tasks_and_workers_autoscale_from_zero(aws):
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "tasks and actors must not land on the head"
    workers = {name: t for name, t in types.items() if name != aws["head_node_type"]}
    gpu = [t for t in workers.values() if re.match(r"^(g\d|p\d)", t["node_config"]["InstanceType"])]
    cpu = [t for t in workers.values() if not re.match(r"^(g\d|p\d)", t["node_config"]["InstanceType"])]
    assert len(gpu) == 2 and len(cpu) == 1, "GPU types on-demand and spot (training, sampling), one CPU type (data)"
    for t in workers.values():
        assert t["min_workers"] == 0
        assert 1 <= t["max_workers"] <= aws["max_workers"]
        assert t["node_config"]["IamInstanceProfile"] == {"Name": "ncsn-ray-worker"}, "the bucket role"
    assert head["node_config"]["IamInstanceProfile"] == {"Name": "ncsn-ray-head"}, "a head role that may pass it"
    assert aws["idle_timeout_minutes"] > 0
    assert aws["provider"]["region"]
    assert aws["provider"].get("cache_stopped_nodes") is False


def _spot(node_type: dict) -> bool:
    return node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"


def test_aws_has_a_spot_gpu_type_from_zero_beside_the_on_demand_ones(aws):
    """Issue 37: elastic training and generation use cheap spot nodes; the on-demand types stay."""
    types = aws["available_node_types"]
    spot = {name: t for name, t in types.items() if _spot(t)}
    assert list(spot) == ["gpu_spot_worker"], "one spot type"
    node_type = spot["gpu_spot_worker"]
    assert node_type["min_workers"] == 0 and node_type["max_workers"] >= 1
    assert node_type["node_config"]["InstanceType"].startswith(("g", "p")), "spot GPUs"
    # RunInstances takes a spot request only as one-time with terminate on reclaim.
    options = node_type["node_config"]["InstanceMarketOptions"]["SpotOptions"]
    assert options == {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
    assert node_type["labels"] == {"ncsn-market": "spot"}
    on_demand = {name for name, t in types.items() if name != aws["head_node_type"] and not _spot(t)}
    assert on_demand == {"gpu_worker", "cpu_worker"}
    assert all(types[name]["labels"] == {"ncsn-market": "on-demand"} for name in on_demand)
    assert sum(t["max_workers"] for name, t in types.items() if name != aws["head_node_type"]) <= aws["max_workers"]


def test_aws_gpu_requests_fill_the_on_demand_type_before_spot(aws):
    """Ray's cluster launcher (its own scheduler, as the autoscaler runs it) adds on-demand GPU
    nodes up to their max_workers and spot nodes beyond: what the README says of where jobs run."""
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    detected = {"g5.xlarge": {"CPU": 4, "GPU": 1}, "m5.2xlarge": {"CPU": 8}, "m5.xlarge": {"CPU": 0}}
    types = {name: {**t, "resources": {**detected[t["node_config"]["InstanceType"]], **t["resources"]}}
             for name, t in aws["available_node_types"].items()}
    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    on_demand = types["gpu_worker"]["max_workers"]

    def added(bundles: list[dict]) -> dict:
        return dict(get_nodes_for(types, {}, aws["head_node_type"], aws["max_workers"], bundles, scorer)[0])

    assert added([{"CPU": 1, "GPU": 1}] * on_demand) == {"gpu_worker": on_demand}
    assert added([{"CPU": 1, "GPU": 1}] * (on_demand + 3)) == {"gpu_worker": on_demand, "gpu_spot_worker": 3}
    assert added([{"CPU": 1}] * 3) == {"cpu_worker": 1}, "CPU work never starts a GPU node"


def test_aws_nodes_run_the_project_image_and_use_token_auth(aws):
    docker = aws["docker"]
    assert docker["image"].endswith("/ncsn-on-ray:0.1.0"), "the image cluster/Dockerfile builds"
    assert "head_image" not in docker and not any("docker" in t for t in aws["available_node_types"].values())
    # The token is mounted as a folder (a single file into Docker draws Ray's warning).
    assert aws["file_mounts"] == {"~/.ray/ncsn-auth": "~/.ray/ncsn-auth"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in aws[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=~/.ray/ncsn-auth/auth_token" in c
                             for c in start), key
    assert "runs/" in aws["rsync_exclude"] and ".git/" in aws["rsync_exclude"]


def test_aws_images_are_found_by_ssm_parameter_per_node_kind(aws):
    types = aws["available_node_types"]
    for name, node_type in types.items():
        image = node_type["node_config"]["ImageId"]
        gpu = node_type["node_config"]["InstanceType"].startswith(("g", "p"))
        assert image.startswith("resolve:ssm:/aws/service/"), name
        assert ("deeplearning" in image and "nvidia-driver-gpu" in image) == gpu, f"{name}: {image}"


def test_head_role_may_pass_exactly_the_worker_role():
    policy = json.loads((CLUSTER / "aws-iam" / "head-policy.json").read_text())
    passes = [st for st in policy["Statement"] if "iam:PassRole" in st["Action"]]
    assert len(passes) == 1 and passes[0]["Effect"] == "Allow"
    assert passes[0]["Resource"].endswith(":role/ncsn-ray-worker"), "PassRole on the worker role only"
    launches = next(st for st in policy["Statement"] if "ec2:RunInstances" in st["Action"])
    assert {"ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances"} <= set(launches["Action"])
    worker = json.loads((CLUSTER / "aws-iam" / "worker-policy.json").read_text())
    actions = {a for st in worker["Statement"] for a in st["Action"]}
    assert "iam:PassRole" not in actions and "s3:PutObject" in actions


# --------------------------------------------------------------------------- KubeRay

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# What a pod may request on the node types the manifests name: the instance's capacity less
# the kubelet's reservation (EKS: about 0.1 CPU and 1.5-2.5 GiB on these sizes) and room for
# daemonsets (CNI, kube-proxy, NVIDIA device plugin, logging: about 0.4 CPU and 1 GiB).
NODE_ALLOCATABLE = {"m5.xlarge": (3.5, 13.0), "g5.xlarge": (3.5, 13.0), "m5.2xlarge": (7.4, 27.0)}


def _quantity(value: str) -> float:
    """Kubernetes CPU ("3", "500m") or memory ("12Gi", "512Mi") as cores or GiB."""
    value = str(value)
    units = {"m": 1e-3, "Ki": 2**-20, "Mi": 2**-10, "Gi": 1.0, "Ti": 2**10}
    for suffix, scale in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def fits(requests: dict, node: tuple[float, float]) -> bool:
    return _quantity(requests["cpu"]) <= node[0] and _quantity(requests["memory"]) <= node[1]


def test_the_service_account_the_pods_use_is_defined_and_bound_to_a_cloud_identity():
    account = load(KUBERAY / "serviceaccount.yaml")
    assert (account["kind"], account["metadata"]["name"]) == ("ServiceAccount", "ncsn-storage")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    assert "iam.gke.io/gcp-service-account" in (KUBERAY / "serviceaccount.yaml").read_text()


def check_pod_template(template: dict, where: str) -> list[dict]:
    containers = template["spec"]["containers"]
    assert isinstance(containers, list) and containers, f"{where}: template.spec.containers"
    for c in containers:
        assert c.get("name") and c.get("image"), f"{where}: every container needs name and image"
        for e in c.get("env", []):
            assert "name" in e and ("value" in e or "valueFrom" in e), f"{where}: env {e}"
            if secret_looking(e["name"]):
                assert "valueFrom" in e, f"{where}: {e['name']} must come from a Secret"
    return containers


def _spot_group(group: dict) -> bool:
    """A worker group placed on spot capacity (a spot node selector or a spot toleration)."""
    pod = group["template"]["spec"]
    words = [*pod.get("nodeSelector", {}).items(), *(t.get("key", "") for t in pod.get("tolerations", []))]
    return any("spot" in str(word).lower() for word in words)


def check_raycluster_spec(spec: dict, where: str) -> None:
    assert spec["rayVersion"] == ray_version(), f"{where}: rayVersion"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth"
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values())
    assert params.get("num-cpus") == "0", f"{where}: the head runs no tasks"
    head_containers = check_pod_template(head["template"], f"{where} head")
    assert head["template"]["spec"].get("serviceAccountName") == "ncsn-storage", f"{where}: the head's identity"
    assert fits(head_containers[0]["resources"]["requests"], NODE_ALLOCATABLE["m5.xlarge"]), f"{where} head"
    assert {p["containerPort"] for p in head_containers[0]["ports"]} >= {6379, 8265}
    groups = spec["workerGroupSpecs"]
    assert isinstance(groups, list) and groups
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names) and all(DNS1123.match(n) for n in names)
    gpu_groups, spot_groups = 0, 0
    for g in groups:
        assert isinstance(g["rayStartParams"], dict)
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        assert g["minReplicas"] == 0, f"{where} {g['groupName']}: autoscale from zero"
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
        assert g["maxReplicas"] >= 1
        containers = check_pod_template(g["template"], f"{where} {g['groupName']}")
        limits = containers[0]["resources"]["limits"]
        gpu_groups += "nvidia.com/gpu" in limits
        spot_groups += _spot_group(g)
        node = NODE_ALLOCATABLE["g5.xlarge" if "nvidia.com/gpu" in limits else "m5.2xlarge"]
        assert fits(containers[0]["resources"]["requests"], node), f"{where} {g['groupName']}: pod > node"
        assert g["template"]["spec"].get("serviceAccountName") == "ncsn-storage", f"{where} {g['groupName']}"
    assert gpu_groups == 2 and spot_groups == 1, f"{where}: GPU worker groups on-demand and spot"
    spot = next(g for g in groups if _spot_group(g))
    assert spot["groupName"] == "gpu-spot" and spot["minReplicas"] == 0
    assert "nvidia.com/gpu" in spot["template"]["spec"]["containers"][0]["resources"]["limits"], f"{where}: spot GPUs"
    keys = {t["key"] for t in spot["template"]["spec"]["tolerations"]}
    assert "nvidia.com/gpu" in keys and {"spot", "cloud.google.com/gke-spot"} <= keys, f"{where}: spot tolerations"
    assert spot["template"]["spec"]["nodeSelector"] == {"eks.amazonaws.com/capacityType": "SPOT"}
    on_demand = next(g for g in groups if g["groupName"] == "gpu")
    assert not _spot_group(on_demand), f"{where}: the on-demand GPU group stays on-demand"
    images = {c["image"] for c in head_containers} | {
        c["image"] for g in groups for c in g["template"]["spec"]["containers"]
    }
    assert len(images) == 1, f"{where}: one image for head and workers: {images}"


def test_raycluster_manifest_has_the_fields_kuberay_requires():
    docs = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    assert len(docs) == 1
    rc = docs[0]
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert DNS1123.match(rc["metadata"]["name"])
    check_raycluster_spec(rc["spec"], "raycluster.yaml")


def test_dockerfile_builds_on_the_same_ray_version():
    first = next(
        line for line in (CLUSTER / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")
    )
    assert first.split()[1].startswith(f"rayproject/ray:{ray_version()}-py3")


@pytest.mark.parametrize("kind", sorted(RAYJOBS))
def test_rayjob_manifests(kind):
    docs = [d for d in yaml.safe_load_all(RAYJOBS[kind].read_text()) if d]
    assert len(docs) == 1
    job = docs[0]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert DNS1123.match(job["metadata"]["name"])
    spec = job["spec"]
    assert spec["entrypoint"] == EXPECTED_COMMANDS[kind]
    assert spec["shutdownAfterJobFinishes"] is True
    check_raycluster_spec(spec["rayClusterSpec"], RAYJOBS[kind].name)
    # The same cluster as raycluster.yaml (its comments document every field).
    assert spec["rayClusterSpec"] == load(RAYCLUSTER)["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/ncsn"
    assert not [k for k in runtime_env.get("env_vars", {}) if secret_looking(k)]
    from ray.runtime_env import RuntimeEnv

    # Ray accepts it (a local working_dir must exist where `ray job submit` runs: in the
    # submitter pod that is the image's /home/ray/ncsn; here, this checkout).
    RuntimeEnv(**{**runtime_env, "working_dir": str(REPO)})


# --------------------------------------------------------------------------- runtime_env


def test_runtime_env_yaml_is_valid_and_holds_no_secret():
    from ray.runtime_env import RuntimeEnv

    env = load(RUNTIME_ENV)
    assert env["working_dir"] == "."
    assert {"runs/", ".git/"} <= set(env["excludes"])
    env_vars = env.get("env_vars") or {}
    assert all(isinstance(v, str) for v in env_vars.values())
    assert not [k for k in env_vars if secret_looking(k)], "credentials never go in a runtime_env"
    assert "AWS_ENDPOINT_URL" in RUNTIME_ENV.read_text(), "document where the endpoint goes"
    RuntimeEnv(**env)


# --------------------------------------------------------------------------- commands


@pytest.mark.parametrize("kind", sorted(EXPECTED_COMMANDS))
def test_documented_commands_use_flags_the_scripts_define(kind):
    argv = shlex.split(EXPECTED_COMMANDS[kind])
    script = REPO / argv[1]
    assert script.is_file(), f"the documented command runs {argv[1]}, which does not exist"
    parser = importlib.import_module(f"ncsn_ray.cli.{script.stem}").build_parser()
    defined = {option for action in parser._actions for option in action.option_strings}
    for flag in (a for a in argv[2:] if a.startswith("--")):
        assert flag in defined, f"{argv[1]} defines no {flag}"
    if "--config" in argv:
        assert Path(configs.resolve(argv[argv.index("--config") + 1])).is_file()


def test_readme_documents_the_cluster_commands():
    def flat(path: Path) -> str:
        return re.sub(r"\s+", " ", path.read_text().replace("\\\n", " "))

    readme, guide = flat(REPO / "README.md"), flat(REPO / "docs" / "guide" / "cluster.md")
    missing = [cmd for cmd in EXPECTED_COMMANDS.values() if cmd not in guide]
    assert not missing, f"docs/guide/cluster.md lacks: {missing}"
    for text, name in ((readme, "README.md"), (guide, "docs/guide/cluster.md")):
        assert "ray job submit" in text and "RAY_AUTH_MODE=token" in text, name
    assert "(docs/guide/cluster.md" in readme, "README.md does not link to the cluster guide"


# --------------------------------------------------------------------------- on Ray


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_runtime_env_yaml_runs_a_job_from_the_repository(tmp_path):
    from support.ray_head import local_ray_head
    from support.ray_jobs import job_output, job_succeeded, submit_job

    import shutil
    import subprocess

    # A copy of the checkout holding what the excludes must keep out: runs/ (training runs,
    # often gigabytes) and a local data/ folder. No .gitignore in the copy, so only the
    # runtime_env's own excludes can keep them out.
    checkout = tmp_path / "checkout"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if name != ".gitignore" and (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    for folder in ("runs/digits", "data"):
        (checkout / folder).mkdir(parents=True)
        (checkout / folder / "big.bin").write_bytes(b"x" * 1024)
    probe = (
        "import os, ncsn_core, ncsn_ray; "
        "assert os.path.isfile('jobs/train.py'), 'the repository was not uploaded'; "
        "assert not os.path.exists('runs'), 'runs/ was uploaded'; "
        "assert not os.path.exists('data'), 'data/ was uploaded'; "
        "print('PROBE_OK', os.environ.get('PYTHONUNBUFFERED'))"
    )
    with local_ray_head(tmp_path=tmp_path / "head", num_cpus=1) as head:
        result = submit_job(
            head,
            ["python", "-c", probe],
            working_dir=checkout,
            runtime_env=load(RUNTIME_ENV),
            timeout=240,
        )
    assert job_succeeded(result), job_output(result)
    assert "PROBE_OK 1" in result.stdout, job_output(result)
