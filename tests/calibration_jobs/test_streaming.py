"""Layer streaming (the GPTQ pattern) gives the statistics of a whole-model pass: bitwise on the
embedded SmolLM2 and on tiny random Llama, Qwen2 (sliding layers) and Gemma 3 (sliding/full masks,
two RoPE tables) decoders; a fresh streamer asked for a later layer replays to it exactly."""

import pytest
import torch

from oscar_cluster.calibration import collect_statistics
from oscar_cluster.calibration_jobs.streaming import LayerStreamer, calibration_sequences, decoder_parts
from oscar_cluster.corpora import read_texts
from oscar_cluster.errors import CalibrationDataError, ConfigError

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=2048)
ARCHS = ["llama", "qwen2", "gemma3"]


class CharTokenizer:
    """Enough of a tokenizer for tokenize_corpus: one id per character."""

    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + ord(c) % 120 for c in text]}


def tiny_model(arch: str):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

    sliding = ["full_attention", "sliding_attention", "sliding_attention"]
    cfg = {"llama": lambda: LlamaConfig(**TINY),
           "qwen2": lambda: Qwen2Config(**TINY, use_sliding_window=True, sliding_window=32, layer_types=sliding),
           "gemma3": lambda: Gemma3TextConfig(**TINY, sliding_window=32, layer_types=sliding[::-1])}[arch]()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def max_diff(ref, got) -> float:
    """Largest |a - b| over every tensor of every layer; asserts the scalar fields match."""
    out = 0.0
    for a, b in zip(ref, got, strict=True):
        assert (a.layer, a.max_position, a.has_pre_rope) == (b.layer, b.max_position, b.has_pre_rope)
        ta, tb = a.tensors(), b.tensors()
        assert ta.keys() == tb.keys()
        out = max([out] + [float((ta[k] - tb[k]).abs().max()) for k in ta])
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_statistics_equal_whole_model(arch):
    model, tok = tiny_model(arch), CharTokenizer()
    texts = ["".join(chr(32 + (i * 7919) % 90) for i in range(1500))]
    ref = collect_statistics(model, tok, texts, max_tokens=1024, seq_len=256, progress=False)
    streamer = LayerStreamer(model, calibration_sequences(tok, texts, 1024, 256))
    got = [streamer.statistics(layer) for layer in range(streamer.num_layers)]
    assert max_diff(ref, got) == 0.0  # the same kernels on the same inputs: bitwise
    assert streamer.replayed == 0


@pytest.mark.model
def test_smollm2_streamed_equal_whole_model_and_replay(smollm2, calib_files):
    model, tok = smollm2
    texts = read_texts(list(calib_files))
    ref = collect_statistics(model, tok, texts, max_tokens=1024, seq_len=256, progress=False)
    seqs = calibration_sequences(tok, texts, 1024, 256)
    assert [s.numel() for s in seqs] == [256] * 4
    streamer = LayerStreamer(model, seqs)
    got = [streamer.statistics(layer) for layer in range(streamer.num_layers)]
    assert max_diff(ref, got) == 0.0
    # a restarted worker: a fresh streamer asked for layer 7 replays layers 0..6 without statistics
    late = LayerStreamer(model, seqs)
    st = late.statistics(7)
    assert late.replayed == 7
    assert max_diff([ref[7]], [st]) == 0.0
    # asking for an earlier layer than the one held starts again from the embedding
    assert max_diff([ref[2]], [late.statistics(2)]) == 0.0


def test_bad_inputs():
    with pytest.raises(CalibrationDataError, match="1024"):
        calibration_sequences(CharTokenizer(), ["too short"], 1024, 256)
    with pytest.raises(ConfigError, match="layers"):
        decoder_parts(torch.nn.Linear(2, 2))
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="at least one"):
        LayerStreamer(model, [])
    with pytest.raises(ConfigError, match="out of range"):
        LayerStreamer(model, [torch.arange(8)]).statistics(3)
