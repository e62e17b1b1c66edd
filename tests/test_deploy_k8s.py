"""deploy/k8s validated as far as a machine without a cluster can: every file parses, the instance and
its classes pass Dagster's and dagster-k8s's own config schemas, the Helm values agree with the instance
and the image, the production run config resolves against the real jobs, and the GPU tags build a
Kubernetes Job with a GPU limit. Nothing here connects to Postgres or a Kubernetes API."""

import importlib
import importlib.metadata
import json
import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import kubernetes
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.ref import InstanceRef
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config
from dagster_k8s.models import k8s_model_from_dict

from s2vec_assets.defs.jobs import MODEL_JOB, REGION_JOB

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy/k8s"
PG_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_DB", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD")

# Keys the chart's values.schema.json allows under runLauncher.config.k8sRunLauncher
# (K8sRunLauncherConfig, additionalProperties: false): one outside them fails `helm install`.
CHART_K8S_RUN_LAUNCHER_KEYS = {
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "failPodOnRunFailure",
    "image",
    "imagePullPolicy",
    "jobNamespace",
    "kubeconfigFile",
    "labels",
    "loadInclusterConfig",
    "resources",
    "runK8sConfig",
    "schedulerName",
    "securityContext",
    "volumeMounts",
    "volumes",
}


def load(name: str):
    return yaml.safe_load((K8S / name).read_text())


def names(refs: list[dict]) -> list[str]:
    return [ref["name"] for ref in refs]


@pytest.fixture(scope="module")
def instance():
    return load("dagster.yaml")


@pytest.fixture(scope="module")
def values():
    return load("values.yaml")


@pytest.fixture(scope="module")
def gpu_tags():
    return load("gpu_training_tags.yaml")


@pytest.fixture
def pg_env(monkeypatch):
    for var in PG_ENV:
        monkeypatch.setenv(var, f"test-{var.lower()}")


def test_every_yaml_under_deploy_k8s_parses():
    files = sorted(K8S.rglob("*.yaml"))
    assert {f.name for f in files} >= {
        "dagster.yaml",
        "values.yaml",
        "gpu_training_tags.yaml",
        "run_config.yaml",
        "large_region_run_config.yaml",
    }
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_instance_and_its_classes_validate_against_their_own_schemas(tmp_path, pg_env):
    shutil.copy(K8S / "dagster.yaml", tmp_path / "dagster.yaml")
    ref = InstanceRef.from_dir(str(tmp_path))
    classes = {
        "storage": ref.storage_data,
        "run_storage": ref.run_storage_data,
        "event_log_storage": ref.event_storage_data,
        "schedule_storage": ref.schedule_storage_data,
        "run_launcher": ref.run_launcher_data,
        "run_coordinator": ref.run_coordinator_data,
    }
    resolved = {}
    for role, data in classes.items():
        cls = getattr(importlib.import_module(data.module_name), data.class_name)
        result = process_config(cls.config_type(), yaml.safe_load(data.config_yaml) or {})
        assert result.success, (role, [e.message for e in result.errors])
        resolved[role] = (cls.__name__, result.value)
    assert resolved["storage"][0] == "DagsterPostgresStorage"
    assert resolved["run_launcher"][0] == "K8sRunLauncher"
    assert resolved["run_coordinator"][0] == "QueuedRunCoordinator"
    # The `env:` sources resolved from the environment, which is where the credentials must come from.
    assert resolved["storage"][1]["postgres_db"]["password"] == "test-dagster_pg_password"
    assert ref.settings["telemetry"] == {"enabled": False}


def test_instance_holds_no_credential_and_fails_without_its_env(tmp_path, pg_env, monkeypatch, instance):
    assert all(
        set(value) == {"env"}
        for key, value in instance["storage"]["postgres"]["postgres_db"].items()
        if key != "port"
    )
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    shutil.copy(K8S / "dagster.yaml", tmp_path / "dagster.yaml")
    data = InstanceRef.from_dir(str(tmp_path)).storage_data
    cls = getattr(importlib.import_module(data.module_name), data.class_name)
    result = process_config(cls.config_type(), yaml.safe_load(data.config_yaml))
    assert not result.success
    assert "DAGSTER_PG_PASSWORD" in " ".join(e.message for e in result.errors)


def test_helm_values_name_the_image_and_module_of_the_dockerfile(values):
    dockerfile = (K8S / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "s2vec_assets.definitions"]
    assert cmd[:3] == ["dagster", "api", "grpc"] and cmd[-2:] == deployment["dagsterApiGrpcArgs"]
    assert cmd[cmd.index("-p") + 1] == str(deployment["port"])
    assert deployment["image"]["repository"] in dockerfile  # the build command's -t names it
    importlib.import_module(deployment["dagsterApiGrpcArgs"][1])


def test_image_installs_what_the_tests_validated():
    dockerfile = (K8S / "Dockerfile").read_text()
    for package in ("dagster-k8s", "dagster-postgres"):
        assert f"{package}=={importlib.metadata.version(package)}" in dockerfile
    torch_pin = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"torch=={torch_pin}" in dockerfile
    assert f"version {importlib.metadata.version('dagster')}" in (K8S / "values.yaml").read_text()


def test_helm_values_keep_to_the_chart_schema_and_agree_with_the_instance(values, instance):
    chart_launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert set(chart_launcher) <= CHART_K8S_RUN_LAUNCHER_KEYS
    launcher = instance["run_launcher"]["config"]
    assert chart_launcher["jobNamespace"] == launcher["job_namespace"]
    assert chart_launcher["imagePullPolicy"] == launcher["image_pull_policy"]
    assert names(chart_launcher["envConfigMaps"]) == launcher["env_config_maps"]
    assert names(chart_launcher["envSecrets"]) == launcher["env_secrets"]
    assert chart_launcher["failPodOnRunFailure"] == launcher["fail_pod_on_run_failure"]
    chart_run_k8s = chart_launcher["runK8sConfig"]
    assert chart_run_k8s["containerConfig"] == launcher["run_k8s_config"]["container_config"]
    assert (
        chart_run_k8s["jobSpecConfig"]["ttlSecondsAfterFinished"]
        == (launcher["run_k8s_config"]["job_spec_config"]["ttl_seconds_after_finished"])
    )
    assert values["global"]["postgresqlSecretName"] == launcher["postgres_password_secret"]
    assert values["global"]["dagsterHome"] == launcher["dagster_home"]
    assert values["global"]["serviceAccountName"] == launcher["service_account_name"]
    # Run pods mount the chart's instance ConfigMap, `<release>-instance` for release `dagster`.
    assert launcher["instance_config_map"] == "dagster-instance"

    runs, pools = values["concurrency"]["runs"], values["concurrency"]["pools"]
    assert values["concurrency"]["enabled"]
    assert runs["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert runs["tagConcurrencyLimits"] == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    assert pools["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == instance["run_coordinator"]["class"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["startTimeoutSeconds"] == instance["run_monitoring"]["start_timeout_seconds"]
    assert monitoring["maxResumeRunAttempts"] == instance["run_monitoring"]["max_resume_run_attempts"]
    assert values["telemetry"] == instance["telemetry"] == {"enabled": False}


def test_postgres_and_warehouse_settings_agree_across_files(values):
    (env,) = yaml.safe_load_all((K8S / "manifests/s2vec-env.yaml").read_text())
    data = env["data"]
    pg = values["postgresql"]
    assert not pg["enabled"] and not values["generatePostgresqlPasswordSecret"]
    assert (pg["postgresqlHost"], pg["postgresqlDatabase"], pg["postgresqlUsername"]) == (
        data["DAGSTER_PG_HOST"],
        data["DAGSTER_PG_DB"],
        data["DAGSTER_PG_USERNAME"],
    )
    assert data["S2VEC_EXECUTOR"] == "multiprocess"
    run_config = load("run_config.yaml")
    assert run_config["resources"]["warehouse"]["config"]["root"] == data["S2VEC_WAREHOUSE"]
    assert data["S2VEC_WAREHOUSE"].startswith("s3://")


@pytest.fixture(scope="module")
def production_defs():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("S2VEC_EXECUTOR", "multiprocess")
        from s2vec_assets.definitions import defs

        return defs()


def test_run_config_resolves_against_the_model_job(production_defs):
    run_config = load("run_config.yaml")
    processed = dg.validate_run_config(production_defs.resolve_job_def(MODEL_JOB), run_config)
    warehouse = processed["resources"]["warehouse"]["config"]
    assert warehouse["root"].startswith("s3://")
    assert warehouse["storage_options"]["conditional_put"] == "etag"
    assert processed["resources"]["device"]["config"]["device"] == "cuda"
    assert processed["execution"]["multiprocess"]["max_concurrent"] == 4
    assert processed["ops"]["mae_model"]["config"]["width"] == 256


def test_region_pipeline_takes_its_warehouse_and_execution(production_defs):
    run_config = load("run_config.yaml")
    region_config = {"resources": {"warehouse": run_config["resources"]["warehouse"]}}
    region_config["execution"] = run_config["execution"]
    dg.validate_run_config(production_defs.resolve_job_def(REGION_JOB), region_config)


def test_large_region_config_spreads_extraction_steps_over_pods(monkeypatch):
    """With S2VEC_EXECUTOR=k8s every step is a pod; the config resolves against the real region job and
    sizes the extraction pods by op name, which is how k8s_job_executor looks them up."""
    monkeypatch.setenv("S2VEC_EXECUTOR", "k8s")
    from s2vec_assets.definitions import defs
    from s2vec_assets.defs.features.assets import cell_features_extract, cell_features_write

    job = defs().resolve_job_def(REGION_JOB)
    assert job.executor_def.name == "k8s"
    processed = dg.validate_run_config(job, load("large_region_run_config.yaml"))
    per_step = processed["execution"]["k8s"]["per_step_k8s_config"]
    assert set(per_step) == {cell_features_extract.name, cell_features_write.name}
    assert per_step[cell_features_extract.name]["container_config"]["resources"]["requests"]["cpu"] == "4"
    assert processed["ops"]["cell_features.cell_features_plan"]["config"]["shard_steps"] == 16


def test_run_config_needs_the_multiprocess_executor(monkeypatch):
    monkeypatch.setenv("S2VEC_EXECUTOR", "in_process")
    from s2vec_assets.definitions import defs

    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurrent"):
        dg.validate_run_config(defs().resolve_job_def(MODEL_JOB), load("run_config.yaml"))


def test_gpu_tags_build_a_kubernetes_job_with_a_gpu(gpu_tags, instance, values):
    k8s_config = gpu_tags["dagster-k8s/config"]
    assert k8s_config["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Dagster stores a dict tag as JSON in the run's tags; dagster-k8s parses it back from there.
    run_tags = {key: json.dumps(v) if isinstance(v, dict) else v for key, v in gpu_tags.items()}
    user_config = get_user_defined_k8s_config(run_tags)
    job_config = DagsterK8sJobConfig(
        job_image="registry.example.com/s2vec/user-code:0.1.0",
        dagster_home=instance["run_launcher"]["config"]["dagster_home"],
        instance_config_map=instance["run_launcher"]["config"]["instance_config_map"],
    )
    job = construct_dagster_k8s_job(
        job_config, ["dagster", "api", "execute_run"], "dagster-run-test", user_config
    )
    pod = job.spec.template.spec
    assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert pod.node_selector == k8s_config["pod_spec_config"]["node_selector"]
    assert [t.key for t in pod.tolerations] == ["nvidia.com/gpu"]
    # The run queue's GPU limit keys on the tag this file sets.
    (limit,) = instance["concurrency"]["runs"]["tag_concurrency_limits"]
    assert gpu_tags[limit["key"]] and limit["limit"] == 1
    assert values["concurrency"]["runs"]["tagConcurrencyLimits"] == [limit]


MANIFEST_MODELS = {"Namespace": kubernetes.client.V1Namespace, "ConfigMap": kubernetes.client.V1ConfigMap}


def manifests() -> list[Path]:
    return sorted((K8S / "manifests").glob("*.yaml"))


def test_manifests_are_valid_kubernetes_objects():
    assert manifests()
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            model = MANIFEST_MODELS[doc["kind"]]
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
            k8s_model_from_dict(model, body)  # raises on a key the Kubernetes model lacks
            assert doc["apiVersion"] == "v1"


def test_kubectl_client_dry_run_of_the_manifests():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    args = [arg for path in manifests() for arg in ("-f", str(path))]
    proc = subprocess.run(
        [kubectl, "apply", "--dry-run=client", "--request-timeout=5s", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 and re.search(r"connection refused|unable to recognize|openapi", proc.stderr):
        pytest.skip(
            f"kubectl's client dry run still needs an API server, and there is none: {proc.stderr[:200]}"
        )
    assert proc.returncode == 0, proc.stderr


def test_the_deployment_gives_the_model_job_the_gpu_tags(monkeypatch, gpu_tags):
    from s2vec_assets.defs import jobs
    from s2vec_assets.defs.model import assets as model_assets

    env = load("manifests/s2vec-env.yaml")["data"]
    dockerfile = (K8S / "Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.MULTILINE)[1]
    # The image holds the file where the ConfigMap points.
    assert "COPY deploy/k8s/gpu_training_tags.yaml deploy/k8s/" in dockerfile
    assert env["S2VEC_TRAINING_TAGS"] == f"{workdir}/deploy/k8s/gpu_training_tags.yaml"
    assert jobs.model.tags == {}  # the embedded default trains without them
    monkeypatch.setenv("S2VEC_TRAINING_TAGS", str(K8S / "gpu_training_tags.yaml"))
    try:
        tagged = importlib.reload(jobs).model
        assert tagged.tags["s2vec/gpu"] == "true"
        assert json.loads(tagged.tags["dagster-k8s/config"]) == gpu_tags["dagster-k8s/config"]
        # And the training step itself, for S2VEC_EXECUTOR=k8s where it is a pod of its own.
        step = importlib.reload(model_assets).mae_model.op.tags
        assert json.loads(step["dagster-k8s/config"]) == gpu_tags["dagster-k8s/config"]
    finally:
        monkeypatch.delenv("S2VEC_TRAINING_TAGS")
        importlib.reload(jobs)
        importlib.reload(model_assets)
