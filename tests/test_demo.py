"""The main job on a reduced budget: the table has every codec and the quality ordering holds."""

import pytest

from oscar_cluster import codecs
from oscar_cluster.demo import run_demo


@pytest.mark.model
def test_demo_small(tmp_path, smollm2):
    result = run_demo(str(tmp_path), max_tokens=4096, eval_tokens=768, needle_tokens=512, progress=False)
    rows = {r["codec"]: r for r in result["codecs"]}
    assert list(rows) == codecs.names()
    err = {k: r["attn_output_error_geomean"] for k, r in rows.items()}
    assert err["bf16"] < 0.02 and err["int8"] < 0.05
    # the claim of the design: oscar at ~2.25 bits beats the 2-bit baselines at 2.5 bits
    assert err["oscar"] < err["oscar-paper"] < err["int2"]
    assert err["oscar"] < 0.7 * err["hadamard2"]
    assert rows["oscar"]["bits_per_element_32k"] < 2.3
    assert result["needle"]["answers"]["bf16"].strip().startswith(result["needle"]["expected"])
    assert (tmp_path / "demo.json").exists() and (tmp_path / "artifact" / "oscar.yaml").exists()
