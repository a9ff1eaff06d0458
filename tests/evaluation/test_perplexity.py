"""Sliding-window perplexity through the codec cache against an independent full-forward reference."""

import math

import pytest
import torch

from oscar_cluster import codecs
from oscar_cluster.corpora import essay_files, read_texts
from oscar_cluster.errors import ConfigError
from oscar_cluster.evaluation.perplexity import perplexity

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def text_ids(smollm2):
    _, tok = smollm2
    text = read_texts(essay_files()[:1])[0]
    return torch.tensor(tok(text)["input_ids"][:420])


def _reference(model, ids, window, stride):
    """Same windows, each as one plain forward pass (no cache, no chunks)."""
    nll, n, scored = 0.0, 0, 0
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + window, len(ids))
        with torch.no_grad():
            logits = model(input_ids=ids[begin:end][None]).logits[0].float()
        lo = max(scored, begin + 1)
        tgt = ids[lo:end]
        nll += float(torch.nn.functional.cross_entropy(logits[lo - 1 - begin:end - 1 - begin], tgt, reduction="sum"))
        n += len(tgt)
        scored = end
        if end >= len(ids):
            break
    return math.exp(nll / n), n


def test_bf16_cache_matches_the_plain_forward(smollm2, text_ids):
    model, _ = smollm2
    got = perplexity(model, text_ids, codecs.get("bf16", head_dim=64), window=256, stride=128, chunk=96)
    want, n = _reference(model, text_ids, 256, 128)
    assert got["tokens"] == n == len(text_ids) - 1, "every token after the first is scored once"
    assert got["ppl"] == pytest.approx(want, rel=5e-3)  # the cache rounds K/V to bf16


def test_a_lossy_codec_raises_perplexity(smollm2, smollm2_artifact, text_ids):
    from oscar_cluster.artifact import load_artifact

    model, _ = smollm2
    base = perplexity(model, text_ids, codecs.get("bf16", head_dim=64), window=256, stride=128, chunk=96)
    int2 = perplexity(model, text_ids, codecs.get("int2", head_dim=64), window=256, stride=128, chunk=96)
    oscar = perplexity(model, text_ids, load_artifact(smollm2_artifact, model=model), window=256, stride=128, chunk=96)
    assert base["ppl"] < oscar["ppl"] < int2["ppl"]


def test_bad_arguments(smollm2):
    model, _ = smollm2
    with pytest.raises(ConfigError, match="stride"):
        perplexity(model, torch.arange(10), codecs.get("bf16", head_dim=64), window=8, stride=16)
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        perplexity(model, torch.arange(1), codecs.get("bf16", head_dim=64))
