"""`--model path/to/config.json`: shapes and parameter estimates derived from transformers configs.

The configs below carry the published config.json fields of each model (huggingface.co model
repositories); the parameter counts they are checked against are the model cards' figures.
"""

import pytest

from oscar_cluster.errors import ConfigError
from oscar_cluster.planner import find_model, resolve_model
from oscar_cluster.planner.hfconfig import model_from_config

LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "max_position_embeddings": 131072, "vocab_size": 128256, "tie_word_embeddings": False,
            "_name_or_path": "meta-llama/Llama-3.1-8B"}
MIXTRAL = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "max_position_embeddings": 32768, "vocab_size": 32000, "num_local_experts": 8,
           "num_experts_per_tok": 2, "sliding_window": None, "tie_word_embeddings": False}
DEEPSEEK_V3 = {"hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
               "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
               "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
               "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
               "v_head_dim": 128, "max_position_embeddings": 163840, "vocab_size": 129280, "tie_word_embeddings": False}
GPT_OSS = {"hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 36, "num_attention_heads": 64,
           "num_key_value_heads": 8, "head_dim": 64, "num_local_experts": 128, "num_experts_per_tok": 4,
           "sliding_window": 128, "layer_types": ["sliding_attention", "full_attention"] * 18,
           "max_position_embeddings": 131072, "vocab_size": 201088, "tie_word_embeddings": False}
MISTRAL = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "max_position_embeddings": 32768, "vocab_size": 32000, "sliding_window": 4096,
           "tie_word_embeddings": False}
QWEN25_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
             "num_key_value_heads": 4, "max_position_embeddings": 32768, "vocab_size": 152064,
             "sliding_window": 131072, "use_sliding_window": False, "max_window_layers": 28,
             "tie_word_embeddings": False}
QWEN3_32B = {"hidden_size": 5120, "intermediate_size": 25600, "num_hidden_layers": 64, "num_attention_heads": 64,
             "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960, "vocab_size": 151936,
             "tie_word_embeddings": False}

# (config, preset it must match, total params tolerance, active tolerance)
CASES = [(LLAMA_8B, "Llama-3.1-8B", 0.01, None), (MIXTRAL, "Mixtral-8x7B", 0.01, 0.02),
         (DEEPSEEK_V3, "DeepSeek-V3", 0.01, 0.03), (GPT_OSS, "gpt-oss-120b", 0.01, 0.01),
         (MISTRAL, "Mistral-7B-v0.1", 0.01, None), (QWEN25_7B, "Qwen2.5-7B", 0.01, None),
         (QWEN3_32B, "Qwen3-32B", 0.01, None)]


@pytest.mark.parametrize("cfg,preset,tol_total,tol_active", CASES)
def test_config_matches_preset(write_config, cfg, preset, tol_total, tol_active):
    m, ref = model_from_config(write_config(cfg)), find_model(preset)
    for f in ("layers", "q_heads", "kv_heads", "head_dim", "hidden_size", "max_context", "sliding_window",
              "sliding_layers", "kv_lora_rank", "qk_rope_head_dim", "num_experts", "experts_per_token"):
        assert getattr(m, f) == getattr(ref, f), f
    assert m.params_total == pytest.approx(ref.params_total, rel=tol_total)
    if tol_active:
        assert m.active == pytest.approx(ref.active, rel=tol_active)


def test_head_dim_from_hidden_over_heads(write_config):
    cfg = {**LLAMA_8B}
    assert "head_dim" not in cfg
    assert model_from_config(write_config(cfg)).head_dim == 4096 // 32


def test_mha_when_kv_heads_absent(write_config):
    cfg = {k: v for k, v in LLAMA_8B.items() if k != "num_key_value_heads"}
    assert model_from_config(write_config(cfg)).kv_heads == 32


def test_qwen2_max_window_layers(write_config):
    cfg = {**QWEN25_7B, "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 20}
    m = model_from_config(write_config(cfg))
    assert (m.sliding_window, m.sliding_layers) == (4096, 8)


def test_text_config_of_multimodal_models(write_config):
    m = model_from_config(write_config({"architectures": ["X"], "text_config": LLAMA_8B}))
    assert m.layers == 32 and m.kv_heads == 8


def test_directory_and_cli_accept_config(write_config, cli):
    p = write_config(LLAMA_8B, "llama8b")
    assert resolve_model(str(p.parent)).layers == 32
    rc, out, err = cli("--model", p, "--ctx", "8k", "--batch", "4", "--format", "json")
    assert rc == 0, err
    assert '"kv_bytes_per_token": 131072' in out


@pytest.mark.parametrize("drop", ["num_hidden_layers", "num_attention_heads", "hidden_size", "max_position_embeddings"])
def test_missing_required_field_is_named(write_config, drop):
    cfg = {k: v for k, v in LLAMA_8B.items() if k != drop}
    with pytest.raises(ConfigError, match=drop):
        model_from_config(write_config(cfg))


def test_missing_fields_for_parameters_named(write_config):
    cfg = {k: v for k, v in LLAMA_8B.items() if k not in ("vocab_size", "intermediate_size")}
    with pytest.raises(ConfigError, match="vocab_size, intermediate_size"):
        model_from_config(write_config(cfg))


def test_not_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config.json"):
        model_from_config(p)
