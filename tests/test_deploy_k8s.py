"""deploy/: the Kubernetes manifests and the Dagster chart's values, validated offline, and the code location image.

Manifests: kubernetes-validate's bundled schemas for one Kubernetes version, in strict mode (an unknown field fails).
Values: the Dagster chart's own values.schema.json (tests/data/helm/README.md says which commit and why a supplement),
made as strict. Neither needs helm, a cluster or the network.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT7

from infinitetalk_pipeline.defs.settings import ENV_VARS
from tests.fixtures.docker import hadolint, in_build_context

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
VALUES = K8S / "dagster-values.yaml"
HELM_DATA = Path(__file__).parent / "data" / "helm"
CODE_LOCATION_DOCKERFILE = DEPLOY / "code-location" / "Dockerfile"

# The Kubernetes API the manifests target; kubernetes-validate (pinned in pyproject.toml) bundles 1.25 to 1.37.
K8S_VERSION = "1.33.0"
# The chart schema's $refs to Kubernetes types point at this site; they resolve to kubernetes-validate's definitions.
CHART_K8S_DEFINITIONS = "https://kubernetesjsonschema.dev/v1.18.0/_definitions.json"
# Helm validates the values merged over the chart's defaults, which supply every other required key; list items are
# not merged, so a code location entry must be complete by itself.
KEEP_REQUIRED = {"UserDeployment", "Image"}
WORKER_PORT = 8188
SLOTS_PER_WORKER = 3  # one rendering, one queued in the worker's ComfyUI, one preparing


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _is_manifest(path: Path) -> bool:
    """A YAML file with a Kubernetes object in it (one key is enough: a manifest missing the other must fail)."""
    return any({"apiVersion", "kind"} & doc.keys() for doc in _documents(path) if isinstance(doc, dict))


MANIFESTS = sorted(path for path in DEPLOY.rglob("*.yaml") if _is_manifest(path))


def _objects(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    found = [doc for path in MANIFESTS for doc in _documents(path) if doc["kind"] == kind]
    return [doc for doc in found if name is None or doc["metadata"]["name"] == name]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    [obj] = _objects(kind, name)
    return obj


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def code_location(values: dict[str, Any]) -> dict[str, Any]:
    [deployment] = values["dagster-user-deployments"]["deployments"]
    return deployment


@pytest.fixture(scope="module")
def workers() -> dict[str, Any]:
    return _one("StatefulSet", "comfyui-worker")


@pytest.fixture(scope="module")
def worker_container(workers: dict[str, Any]) -> dict[str, Any]:
    [container] = workers["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def chart_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((HELM_DATA / "values.schema.json").read_text())
    definitions = schema.pop("definitions")
    _tighten(schema, keep_required=False)
    for name, definition in definitions.items():
        _tighten(definition, keep_required=name in KEEP_REQUIRED)
    schema["definitions"] = definitions
    supplement = json.loads((HELM_DATA / "values.schema.supplement.json").read_text())
    schema["properties"]["concurrency"] = supplement["concurrency"]
    schema["definitions"]["Daemon"]["properties"]["runMonitoring"] = supplement["runMonitoring"]

    k8s_types = json.loads((_k8s_schema_dir() / "_definitions.json").read_text())["$defs"]
    # Both spellings: the chart's refs say /definitions/..., the Kubernetes types' own refs say /$defs/...
    registry = Registry().with_resource(
        CHART_K8S_DEFINITIONS, DRAFT7.create_resource({"definitions": k8s_types, "$defs": k8s_types})
    )
    # Draft 7: the chart's generator (pydantic 1) writes `definitions` and if/then, and a $ref there stands alone.
    return jsonschema.Draft7Validator(schema, registry=registry)


def _k8s_schema_dir() -> Path:
    return Path(str(files(kubernetes_validate) / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"))


def _tighten(node: Any, *, keep_required: bool) -> None:
    """Strict like kubernetes-validate's strict mode: an object that lists its properties admits no others (the chart
    leaves some models open, where a misspelt key would be silently ignored). `required` goes where helm would fill
    the key from the chart's defaults (KEEP_REQUIRED). Conditionals (if/then) are left as they are."""
    if isinstance(node, list):
        for item in node:
            _tighten(item, keep_required=False)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "object" and "properties" in node:
        node.setdefault("additionalProperties", False)
        if not keep_required:
            node.pop("required", None)
    for key, child in node.items():
        if key not in {"if", "then"}:
            _tighten(child, keep_required=False)


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every scalar in a YAML document."""
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _walk(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _walk(child, f"{path}[{i}]")
    else:
        yield path, node


# --- Kubernetes manifests ---


def test_every_file_in_deploy_k8s_but_the_chart_values_is_a_manifest() -> None:
    others = {_relative(path) for path in K8S.glob("*.yaml")} - {_relative(path) for path in MANIFESTS}
    assert others == {_relative(VALUES)}


@pytest.mark.parametrize("path", MANIFESTS, ids=_relative)
def test_each_manifest_is_valid_for_the_target_kubernetes_version_in_strict_mode(path: Path) -> None:
    for doc in _documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field(workers: dict[str, Any]) -> None:
    broken = copy.deepcopy(workers)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_each_worker_pod_asks_for_exactly_one_gpu(workers: dict[str, Any]) -> None:
    pod = workers["spec"]["template"]["spec"]
    containers = pod["containers"] + pod.get("initContainers", [])
    limits = [c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0) for c in containers]
    requests = [c.get("resources", {}).get("requests", {}).get("nvidia.com/gpu", 0) for c in containers]
    assert sum(limits) == 1
    assert all(request in (0, limit) for request, limit in zip(requests, limits, strict=True))


def test_worker_readiness_asks_comfyui_and_liveness_asks_our_extension(worker_container: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in worker_container["ports"]}
    for probe, path in (("readinessProbe", "/system_stats"), ("livenessProbe", "/infinitetalk/live")):
        get = worker_container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == WORKER_PORT, probe


def test_a_drained_worker_is_restarted_within_a_few_minutes_but_not_on_one_slow_answer(
    worker_container: dict[str, Any],
) -> None:
    live = worker_container["livenessProbe"]
    assert live["failureThreshold"] >= 2
    assert live["failureThreshold"] * live["periodSeconds"] <= 180


def test_the_startup_probe_gives_model_loading_at_least_ten_minutes(worker_container: dict[str, Any]) -> None:
    startup = worker_container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600


def test_a_terminating_worker_has_time_to_finish_its_render(
    workers: dict[str, Any], worker_container: dict[str, Any], code_location: dict[str, Any]
) -> None:
    deadline = int(code_location["env"]["INFINITETALK_RENDER_DEADLINE_SECONDS"])
    assert workers["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= deadline
    [*_, script] = worker_container["lifecycle"]["preStop"]["exec"]["command"]
    assert '"http://127.0.0.1:8188/infinitetalk"' in script and '"/drain"' in script and '"/state"' in script


def test_the_workers_headless_service_gives_each_pod_a_stable_name(workers: dict[str, Any]) -> None:
    service = _one("Service", workers["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["namespace"] == workers["metadata"]["namespace"]
    pod_labels = workers["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["port"] for p in service["spec"]["ports"]] == [WORKER_PORT]


def test_the_models_are_mounted_read_only_where_extra_model_paths_expects_them(
    workers: dict[str, Any], worker_container: dict[str, Any]
) -> None:
    config = yaml.safe_load((DEPLOY / "worker" / "extra_model_paths.yaml").read_text())
    [paths] = config.values()
    [mount] = [m for m in worker_container["volumeMounts"] if m["mountPath"] == paths["base_path"]]
    assert mount["readOnly"] is True
    [volume] = [v for v in workers["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = _one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert "ReadOnlyMany" in claim["spec"]["accessModes"]


def test_a_disruption_budget_lets_at_most_one_worker_go_at_a_time(workers: dict[str, Any]) -> None:
    [budget] = [
        pdb
        for pdb in _objects("PodDisruptionBudget")
        if pdb["spec"]["selector"]["matchLabels"].items() <= workers["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert budget["spec"]["maxUnavailable"] == 1


# --- the Dagster chart's values ---


def test_the_values_are_valid_for_the_dagster_chart(
    chart_validator: jsonschema.protocols.Validator, values: dict[str, Any]
) -> None:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in chart_validator.iter_errors(values)]
    assert errors == []


@pytest.mark.parametrize(
    ("section", "misspelt"),
    [
        ((), "dagsterDeamon"),
        (("dagsterDaemon", "runMonitoring"), "freeSlotsAfterRunEndSecond"),
        (("concurrency", "pools"), "defaultLimits"),
        (("dagster-user-deployments", "deployments", 0), "envSecret"),
    ],
)
def test_the_chart_schema_rejects_a_misspelt_key(
    chart_validator: jsonschema.protocols.Validator,
    values: dict[str, Any],
    section: tuple[str | int, ...],
    misspelt: str,
) -> None:
    broken = copy.deepcopy(values)
    node = broken
    for key in section:
        node = node[key]
    node[misspelt] = 1
    assert not chart_validator.is_valid(broken)


def test_the_code_location_serves_the_module_workspace_yaml_loads(code_location: dict[str, Any]) -> None:
    [location] = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
    module = location["python_module"]["module_name"]
    assert code_location["dagsterApiGrpcArgs"] == ["-m", module]
    assert f'"-m", "{module}"]' in CODE_LOCATION_DOCKERFILE.read_text()


def test_the_code_location_env_names_only_settings_the_code_reads(code_location: dict[str, Any]) -> None:
    assert set(code_location["env"]) <= {setting.name for setting in ENV_VARS}
    assert code_location["env"]["INFINITETALK_PROFILE"] == "infinitetalk"
    assert code_location["env"]["INFINITETALK_OUTPUT_ROOT"].startswith("s3://")


def test_comfyui_urls_name_each_worker_replica_through_the_headless_service(
    workers: dict[str, Any], code_location: dict[str, Any]
) -> None:
    name, namespace = workers["metadata"]["name"], workers["metadata"]["namespace"]
    service = workers["spec"]["serviceName"]
    expected = [
        f"http://{name}-{ordinal}.{service}.{namespace}.svc:{WORKER_PORT}"
        for ordinal in range(workers["spec"]["replicas"])
    ]
    assert [url.strip() for url in code_location["env"]["COMFYUI_URLS"].split(",")] == expected


def test_the_gpu_render_pool_has_three_slots_per_worker(workers: dict[str, Any], values: dict[str, Any]) -> None:
    assert values["concurrency"]["enabled"] is True
    assert values["concurrency"]["pools"]["defaultLimit"] == SLOTS_PER_WORKER * workers["spec"]["replicas"]


def test_the_run_limit_leaves_every_pool_slot_usable(values: dict[str, Any]) -> None:
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] > values["concurrency"]["pools"]["defaultLimit"]


def test_run_monitoring_frees_the_slots_of_runs_that_ended_badly(values: dict[str, Any]) -> None:
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["freeSlotsAfterRunEndSeconds"] > 0


def test_runs_are_queued_then_launched_as_kubernetes_jobs(values: dict[str, Any]) -> None:
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def test_no_secret_value_is_written_in_the_values(values: dict[str, Any]) -> None:
    secret_like = re.compile(r"password|secret_?access|access_?key|token|credential", re.IGNORECASE)
    inline = [path for path, value in _walk(values) if secret_like.search(path.rsplit(".", 1)[-1]) and value]
    assert inline == []
    assert values["generatePostgresqlPasswordSecret"] is False


def test_aws_credentials_come_from_a_secret_the_manifests_define(code_location: dict[str, Any]) -> None:
    [reference] = code_location["envSecrets"]
    secret = _one("Secret", reference["name"])
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secret["stringData"].keys()
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & code_location["env"].keys()


def test_secret_templates_hold_placeholders_only() -> None:
    for secret in _objects("Secret"):
        assert set(secret["stringData"].values()) == {"REPLACE_ME"}, secret["metadata"]["name"]


def test_the_chart_reads_the_postgresql_password_and_host_the_manifests_define(values: dict[str, Any]) -> None:
    secret = _one("Secret", values["global"]["postgresqlSecretName"])
    assert "postgresql-password" in secret["stringData"]
    assert (
        _one("Service", values["postgresql"]["postgresqlHost"])["spec"]["ports"][0]["port"]
        == (values["postgresql"]["service"]["port"])
    )


def test_the_docs_install_the_chart_version_of_the_pinned_dagster() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [dagster] = [d for d in pyproject["project"]["dependencies"] if d.startswith("dagster==")]
    version = dagster.removeprefix("dagster==")
    assert f"dagster/dagster --version {version} " in (ROOT / "docs" / "deploy.md").read_text()
    assert f"version {version}" in VALUES.read_text()


# --- the code location image ---


def test_the_code_location_dockerfile_passes_hadolint() -> None:
    result = hadolint(CODE_LOCATION_DOCKERFILE)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_the_code_location_image_installs_the_wheel_under_the_constraints_without_torch() -> None:
    lines = [line for line in CODE_LOCATION_DOCKERFILE.read_text().splitlines() if not line.startswith("#")]
    instructions = " ".join("\n".join(lines).replace("\\\n", " ").split())  # continuations joined, comments out
    assert re.match(r"FROM python:3\.11[.\w-]*-slim", instructions)
    assert "/opt/venv/bin/pip wheel --no-deps -w /tmp/wheels /tmp/src" in instructions
    assert "/opt/venv/bin/pip install -c /tmp/src/constraints/pipeline.txt" in instructions
    assert " -e " not in instructions and "--editable" not in instructions
    assert "torch" not in instructions.lower()
    assert 'CMD ["dagster", "api", "grpc"' in instructions and "ENTRYPOINT" not in instructions


def test_the_code_location_image_has_what_the_charts_instance_loads() -> None:
    """Run storage in PostgreSQL and the K8sRunLauncher: dagster-postgres and dagster-k8s, at dagster's version."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = (DEPLOY / "code-location" / "requirements.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in [*pyproject["project"]["dependencies"], *requirements] if "==" in line)
    integration_version = pins["dagster-aws"]  # dagster's integrations share one version line
    assert pins.get("dagster-postgres") == integration_version
    assert pins.get("dagster-k8s") == integration_version
    assert "torch" not in pins


def test_the_code_location_requirements_agree_with_the_pipeline_constraints() -> None:
    """Both files constrain one install: a package pinned in both must be pinned alike, or the image cannot build."""

    def pins(path: Path) -> dict[str, str]:
        lines = [line.strip() for line in path.read_text().splitlines()]
        pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
        return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pairs}

    requirements = pins(DEPLOY / "code-location" / "requirements.txt")
    constraints = pins(ROOT / "constraints" / "pipeline.txt")
    assert {name: v for name, v in requirements.items() if constraints.get(name, v) != v} == {}


def test_the_code_location_build_context_holds_what_the_image_is_made_of() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = [
        *["pyproject.toml", "README.md", *wheel["packages"], *wheel["force-include"]],
        *["constraints/pipeline.txt", "deploy/code-location/requirements.txt"],
    ]
    assert [path for path in needed if not _in_code_location_context(path)] == []
    assert not _in_code_location_context(".venv") and not _in_code_location_context(".infinitetalk")


def _in_code_location_context(path: str) -> bool:
    return in_build_context(CODE_LOCATION_DOCKERFILE.with_name("Dockerfile.dockerignore"), path)
