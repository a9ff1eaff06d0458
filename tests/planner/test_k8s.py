"""KubeRay manifests: every rendered manifest validates against the KubeRay v1 CRDs (shared data)
and the Kubernetes schemas; the Serve config inside validates against Ray's schema; the committed
overlays are what oscar-plan writes; production rules hold; broken manifests fail."""

import copy
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from oscar_cluster.errors import ConfigError
from oscar_cluster.planner import k8s
from oscar_cluster.planner.cli import main as plan_main

ROOT = Path(__file__).resolve().parents[2]
SHARED_ENV = "OSCAR_SHARED_DATA"


def _shared_data() -> Path:
    """The project's shared data (referenced, never copied into the repository): $OSCAR_SHARED_DATA,
    else ../shared/data beside this checkout, else /work/shared/data. Missing data fails the tests."""
    for cand in (os.environ.get(SHARED_ENV), ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if cand and (Path(cand) / "kuberay-crds").is_dir():
            return Path(cand)
    raise FileNotFoundError(f"KubeRay CRDs not found in ../shared/data beside {ROOT} or /work/shared/data; "
                            f"set {SHARED_ENV}")


CRDS = _shared_data() / "kuberay-crds"
OVERLAYS = sorted((ROOT / "deploy" / "k8s" / "overlays").iterdir())
K8S_VERSION = "1.31.0"
PLANS = {  # overlay -> the oscar-plan arguments that wrote it
    "llama-70b-oscar-128k-h100": ["--model", "70b", "--ctx", "128k", "--batch", "32", "--gpu", "h100"],
    "llama-8b-oscar-128k-h200": ["--model", "8b", "--ctx", "128k", "--batch", "16", "--gpu", "h200", "--gpus", "1"],
}


def _validate(doc):
    if doc["apiVersion"] == "ray.io/v1":
        k8s.validate_against_crds(doc, CRDS)
    elif doc["kind"] == "PodMonitor":  # Prometheus Operator CRD: no schema here; check what the operator needs
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["spec"]["selector"]["matchLabels"] and doc["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_overlays_are_the_ones_listed():
    assert [d.name for d in OVERLAYS] == sorted(PLANS)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda d: d.name)
def test_overlay_renders_to_valid_manifests(overlay):
    docs = k8s.render(overlay)
    assert sorted(d["kind"] for d in docs) == ["NetworkPolicy", "PersistentVolumeClaim", "PersistentVolumeClaim",
                                               "PodMonitor", "RayJob", "RayService"]
    for doc in docs:
        _validate(doc)
    k8s.check_hygiene(docs)  # includes serveConfigV2 against Ray's ServeDeploySchema
    svc = next(d for d in docs if d["kind"] == "RayService")
    cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    llm = cfg["applications"][0]["args"]["llm_configs"][0]
    tp = llm["engine_kwargs"]["tensor_parallel_size"]
    worker = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    res = worker["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == worker["rayStartParams"]["num-gpus"] == str(tp)
    assert svc["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert llm["engine_kwargs"]["attention_backend"] == "CUSTOM"
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["spec"]["entrypoint"].startswith("oscar-calibrate --model /models/")
    assert f"--out {llm['runtime_env']['env_vars']['OSCAR_ARTIFACT']}" in job["spec"]["entrypoint"]


@pytest.mark.parametrize("name", sorted(PLANS))
def test_committed_overlay_is_what_oscar_plan_writes(name, tmp_path, capsys):
    out = tmp_path / name
    assert plan_main([*PLANS[name], "--emit", "kustomize-overlay", "--out", str(out)]) == 0
    capsys.readouterr()
    for f in ("patch-rayservice.yaml", "patch-rayjob.yaml"):
        assert (out / f).read_text() == (ROOT / "deploy/k8s/overlays" / name / f).read_text(), \
            f"{name}/{f} is stale: regenerate with the command in its kustomization.yaml"


@pytest.mark.parametrize("kind", ["rayservice", "rayjob"])
def test_emit_writes_valid_manifests(kind, tmp_path, capsys):
    assert plan_main(["--model", "70b", "--ctx", "128k", "--batch", "32", "--gpu", "h100", "--emit", kind,
                      "--out", str(tmp_path)]) == 0
    assert "hygiene and Serve config checked" in capsys.readouterr().err
    docs = list(yaml.safe_load_all((tmp_path / f"{kind}.yaml").read_text()))
    for doc in docs:
        _validate(doc)
    assert any(d["kind"] == ("RayService" if kind == "rayservice" else "RayJob") for d in docs)


@pytest.fixture()
def rendered():
    return k8s.render(OVERLAYS[0])


def test_missing_gpu_limit_fails(rendered):
    docs = copy.deepcopy(rendered)
    svc = next(d for d in docs if d["kind"] == "RayService")
    del svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    with pytest.raises(ConfigError, match="nvidia.com/gpu requests '8' must equal limits None"):
        k8s.check_hygiene(docs)


def test_non_string_ray_start_param_fails_the_crd_and_the_check(rendered):
    svc = copy.deepcopy(next(d for d in rendered if d["kind"] == "RayService"))
    svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = 8
    with pytest.raises(ConfigError, match="rayStartParams.num-gpus"):
        k8s.validate_against_crds(svc, CRDS)
    with pytest.raises(ConfigError, match="must be a string"):
        k8s.check_hygiene([svc])


@pytest.mark.parametrize("breakage,match", [
    (lambda c: c["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    (lambda c: c.update(env=[{"name": "HF_TOKEN", "value": "hf_abc"}]), "secretKeyRef"),
    (lambda c: c.pop("readinessProbe"), "readinessProbe"),
])
def test_hygiene_rules(rendered, breakage, match):
    docs = copy.deepcopy(rendered)
    svc = next(d for d in docs if d["kind"] == "RayService")
    breakage(svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0])
    with pytest.raises(ConfigError, match=match):
        k8s.check_hygiene(docs)


def test_root_user_and_bad_serve_config_fail(rendered):
    docs = copy.deepcopy(rendered)
    job = next(d for d in docs if d["kind"] == "RayJob")
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0
    with pytest.raises(ConfigError, match="non-root"):
        k8s.check_hygiene(docs)
    docs = copy.deepcopy(rendered)
    svc = next(d for d in docs if d["kind"] == "RayService")
    cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    asc = cfg["applications"][0]["args"]["llm_configs"][0]["deployment_config"]["autoscaling_config"]
    asc["min_replicas"], asc["max_replicas"] = 3, 1  # the CRD's string field lets this through
    svc["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)
    k8s.validate_against_crds(svc, CRDS)
    with pytest.raises(ConfigError, match="min_replicas"):
        k8s.check_hygiene(docs)


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(ConfigError, match="configMapGenerator"):
        k8s.render(tmp_path)


def test_strategic_merge():
    base = {"a": 1, "list": [{"name": "x", "v": 1}, {"name": "y", "v": 2}], "plain": [1, 2], "gone": 5}
    patch = {"list": [{"name": "y", "v": 3}, {"name": "z", "v": 4}], "plain": [9], "gone": None}
    assert k8s.merge(base, patch) == {"a": 1, "list": [{"name": "x", "v": 1}, {"name": "y", "v": 3},
                                                       {"name": "z", "v": 4}], "plain": [9]}
