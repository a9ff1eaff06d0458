"""oscar-serve config: schema, validation with the path of the bad field, and --dry-run output."""

import copy
import os

import pytest
import yaml

from oscar_cluster.errors import ConfigError
from oscar_cluster.serving.cli import main
from oscar_cluster.serving.config import load_serve_config, parse_serve_config

VLLM = {"engine": "vllm", "model": {"name": "meta-llama/Llama-3.1-70B-Instruct", "accelerator_type": "H100",
                                    "tensor_parallel_size": 4, "max_model_len": 131072,
                                    "autoscaling": {"min_replicas": 1, "max_replicas": 3,
                                                    "target_ongoing_requests": 24, "max_ongoing_requests": 32}}}


def _tf(artifact, **model):
    return {"engine": "transformers", "model": {"name": "smollm2-135m", "artifact": str(artifact), **model}}


def test_transformers_config_defaults_and_paths(smollm2_artifact, tmp_path):
    cfg = parse_serve_config(_tf(smollm2_artifact))
    assert cfg.http.host == "127.0.0.1", "loopback unless configured otherwise"
    assert cfg.model.limits.max_tokens == 256 and cfg.model.autoscaling.target_ongoing_requests == 2
    # relative artifact paths resolve against the config file's directory
    (tmp_path / "cfg").mkdir()
    p = tmp_path / "cfg" / "serve.yaml"
    rel = os.path.relpath(smollm2_artifact, p.parent)
    p.write_text(yaml.safe_dump(_tf(rel)))
    assert load_serve_config(p).model.artifact == str(smollm2_artifact.resolve())


@pytest.mark.parametrize("mutate,path", [
    (lambda c: c["model"].update(colour="red"), "model.colour: unknown key"),
    (lambda c: c.update(enginee="vllm"), "enginee: unknown key"),
    (lambda c: c["model"].setdefault("autoscaling", {}).update(min_replicas=3, max_replicas=2),
     "model.autoscaling.min_replicas: 3 > max_replicas 2"),
    (lambda c: c["model"].setdefault("limits", {}).update(max_tokens="lots"), "model.limits.max_tokens: expected an integer"),
    (lambda c: c["model"].update(tensor_parallel_size=2), "model.tensor_parallel_size: the transformers engine"),
    (lambda c: c["model"].pop("artifact"), "model.artifact: the oscar codec needs an artifact"),
    (lambda c: c.update(http={"port": 70000}), "http.port: must be in 1..65535"),
    (lambda c: c["model"].update(prefill="eager"), "model.prefill: must be chunked or bf16"),
])
def test_bad_transformers_configs_name_the_field(smollm2_artifact, mutate, path):
    cfg = _tf(smollm2_artifact)
    mutate(cfg)
    with pytest.raises(ConfigError, match=path.replace("(", r"\(").replace(".", r"\.")):
        parse_serve_config(cfg)


def test_vllm_tp_must_divide_the_heads():
    parse_serve_config(VLLM)
    bad = copy.deepcopy(VLLM)
    bad["model"]["tensor_parallel_size"] = 3
    with pytest.raises(ConfigError, match=r"model\.tensor_parallel_size: 3 does not divide .* 64 attention / 8 KV"):
        parse_serve_config(bad)
    unknown = copy.deepcopy(VLLM)
    unknown["model"]["name"] = "someone/unknown-model"
    with pytest.raises(ConfigError, match="num_attention_heads"):
        parse_serve_config(unknown)
    unknown["model"].update(num_attention_heads=32, num_kv_heads=8, tensor_parallel_size=8)
    assert parse_serve_config(unknown).model.tensor_parallel_size == 8


def test_artifact_for_another_model_is_rejected(smollm2_artifact):
    cfg = copy.deepcopy(VLLM)
    cfg["model"]["artifact"] = str(smollm2_artifact)  # SmolLM2's artifact for Llama-70B
    with pytest.raises(ConfigError, match=r"model\.artifact: .* calibrated for another model \(num_layers 30 vs 80"):
        parse_serve_config(cfg)
    with pytest.raises(ConfigError, match=r"model\.artifact: .*no oscar\.yaml"):
        parse_serve_config(_tf(smollm2_artifact.parent))


def test_dry_run_validates_against_ray(tmp_path, capsys, smollm2_artifact):
    from ray.serve.schema import ServeDeploySchema

    for name, cfg in (("tf.yaml", _tf(smollm2_artifact)), ("vllm.yaml", VLLM)):
        p = tmp_path / name
        p.write_text(yaml.safe_dump(cfg))
        assert main([str(p), "--dry-run"]) == 0
        doc = yaml.safe_load(capsys.readouterr().out)
        ServeDeploySchema.model_validate(doc)
        app = doc["applications"][0]
        if cfg["engine"] == "vllm":
            llm = app["args"]["llm_configs"][0]
            assert llm["engine_kwargs"]["attention_backend"] == "CUSTOM"
            assert llm["placement_group_config"]["strategy"] == "STRICT_PACK"
            assert len(llm["placement_group_config"]["bundles"]) == 4
            asc = llm["deployment_config"]["autoscaling_config"]
            assert asc["target_ongoing_requests"] == 24 and llm["deployment_config"]["max_ongoing_requests"] == 32
        else:
            dep = app["deployments"][0]
            assert dep["autoscaling_config"]["target_ongoing_requests"] == 2 and dep["max_ongoing_requests"] == 4


def test_cli_errors_are_one_line(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("engine: transformers\nmodel: {name: smollm2-135m, artifact: /nowhere, colour: red}\n")
    assert main([str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model.colour: unknown key")
    assert main([str(tmp_path / "missing.yaml"), "--dry-run"]) == 2
    p.write_text("engine: [unclosed\n")
    assert main([str(p), "--dry-run"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
