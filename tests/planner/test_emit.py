"""`--emit serve-config`: a Ray Serve (ServeDeploySchema) document for the oscar-int2 plan.

Ray is not installed in the test environment: the structure is checked by `check_serve_config`
(the ServeDeploySchema / LLMConfig fields as of ray 2.60, reference/serving.md), and Ray's own
schema runs whenever Ray is importable.
"""

import copy
import importlib.util
import os

import pytest
import yaml

from oscar_cluster.errors import ConfigError
from oscar_cluster.planner import plan
from oscar_cluster.planner.emit import IMPORT_PATH, check_serve_config, emit, serve_config, validate_with_ray, write_atomic


@pytest.fixture(scope="module")
def seed_plan(request_for):
    return plan(request_for("70b", "h100", 131072, 32))


def test_written_config_for_seed_example(cli, tmp_path):
    rc, _, err = cli("--model", "70b", "--ctx", "128k", "--batch", "32", "--emit", "serve-config", "--out", tmp_path)
    assert rc == 0, err
    path = tmp_path / "serve-config.yaml"
    assert f"wrote {path}" in err
    text = path.read_text()
    assert text.startswith("# Ray Serve config written by: oscar-plan --model 70b")
    cfg = yaml.safe_load(text)
    check_serve_config(cfg)
    app = cfg["applications"][0]
    assert app["import_path"] == IMPORT_PATH == "ray.serve.llm:build_openai_app"
    llm = app["args"]["llm_configs"][0]
    assert llm["model_loading_config"] == {"model_id": "Llama-3.1-70B", "model_source": "meta-llama/Llama-3.1-70B-Instruct"}
    assert llm["engine_kwargs"] == {"tensor_parallel_size": 8, "pipeline_parallel_size": 1, "max_model_len": 131072,
                                    "max_num_seqs": 32, "gpu_memory_utilization": 0.9, "attention_backend": "CUSTOM"}
    dc = llm["deployment_config"]
    assert dc["autoscaling_config"]["target_ongoing_requests"] == 32 and dc["max_ongoing_requests"] == 32
    assert dc["autoscaling_config"]["min_replicas"] == 1 and dc["autoscaling_config"]["max_replicas"] == 1
    assert llm["accelerator_type"] == "H100"
    assert llm["runtime_env"] == {"env_vars": {"VLLM_PLUGINS": "oscar"}}
    assert llm["placement_group_config"] == {"bundles": [{"GPU": 1}] * 8, "strategy": "STRICT_PACK"}
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_pipeline_plan_uses_pack_and_all_bundles(request_for):
    p = plan(request_for("deepseek-v3", "h100", 131072, 32))
    cfg = serve_config(p)
    llm = cfg["applications"][0]["args"]["llm_configs"][0]
    s = p.option("oscar-int2").shape
    assert s.pp > 1
    assert llm["engine_kwargs"]["pipeline_parallel_size"] == s.pp
    assert len(llm["placement_group_config"]["bundles"]) == s.tp * s.pp
    assert llm["placement_group_config"]["strategy"] == "PACK"
    check_serve_config(cfg)


def test_fp8_weights_set_quantization(request_for):
    cfg = serve_config(plan(request_for("70b", ctx=32768, batch=8, weights="fp8")))
    assert cfg["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"]["quantization"] == "fp8"


def _llm(cfg):
    return cfg["applications"][0]["args"]["llm_configs"][0]


BREAKAGES = [
    (lambda c: _llm(c)["deployment_config"]["autoscaling_config"].pop("target_ongoing_requests"), "target_ongoing"),
    (lambda c: _llm(c)["deployment_config"].pop("max_ongoing_requests"), "max_ongoing_requests"),
    (lambda c: _llm(c)["deployment_config"]["autoscaling_config"].update(min_replicas=3, max_replicas=2), "min_replicas"),
    (lambda c: c["applications"][0].update(import_path="ray.serve.llm:a:b"), "import_path"),
    (lambda c: c["applications"][0].update(port=8000), "unknown key"),
    (lambda c: c.update(aplications=[]), "unknown top-level"),
    (lambda c: _llm(c)["engine_kwargs"].update(attention_backend="FLASH_ATTN"), "CUSTOM"),
    (lambda c: _llm(c)["engine_kwargs"].update(tensor_parallel_size="8"), "tensor/pipeline"),
    (lambda c: _llm(c)["runtime_env"]["env_vars"].update(VLLM_PLUGINS="other"), "VLLM_PLUGINS"),
    (lambda c: _llm(c)["placement_group_config"]["bundles"].pop(), "bundles"),
    (lambda c: _llm(c).update(accelerator_type="H100-SXM"), "accelerator_type"),
    (lambda c: _llm(c).update(engine_args={}), "unknown key"),
    (lambda c: c["applications"].append(copy.deepcopy(c["applications"][0])), "repeat"),
]


@pytest.mark.parametrize("breakage,needle", BREAKAGES)
def test_structure_check_rejects(seed_plan, breakage, needle):
    cfg = serve_config(seed_plan)
    check_serve_config(copy.deepcopy(cfg))
    breakage(cfg)
    with pytest.raises(ConfigError, match=needle):
        check_serve_config(cfg)


def test_ray_schema_validation(seed_plan):
    cfg = serve_config(seed_plan)
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(ConfigError, match=r"ray\[serve\]"):
            validate_with_ray(cfg)
    else:  # Ray present: its own schema must accept the file
        validate_with_ray(cfg)


def test_plan_that_does_not_fit_is_not_emitted(request_for, tmp_path):
    p = plan(request_for("70b", "h100", 131072, 32, max_gpus=4))
    with pytest.raises(ConfigError, match="nothing to emit"):
        emit("serve-config", p, tmp_path)
    assert not any(tmp_path.iterdir())


def test_kubernetes_kinds_for_a_plan_that_does_not_fit_write_nothing(request_for, tmp_path):
    p = plan(request_for("70b", "h100", 131072, 32, max_gpus=4))
    for kind in ("rayservice", "rayjob", "kustomize-overlay"):
        with pytest.raises(ConfigError, match="nothing to emit"):
            emit(kind, p, tmp_path)
    assert not any(tmp_path.iterdir())


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "out" / "serve-config.yaml"
    write_atomic(p, "one\n")
    write_atomic(p, "two\n")
    assert p.read_text() == "two\n"
    assert [x.name for x in p.parent.iterdir()] == ["serve-config.yaml"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "serve-config.yaml"
    write_atomic(p, "old\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(p, "new\n")
    assert p.read_text() == "old\n"
    assert [x.name for x in tmp_path.iterdir()] == ["serve-config.yaml"]
