"""sinks: rows of the bf16 sink pool keyed by first block id, recycled least recently used."""

from oscar_cluster.vllm_plugin.sinks import SinkRows


def test_rows_are_reused_per_block_and_recycled_lru():
    r = SinkRows(2)
    a, b = r.start(10), r.start(20)
    assert {a, b} == {0, 1} and len(r) == 2
    assert r.lookup(10) == a  # 10 is now the most recent
    c = r.start(30)  # recycles 20's row, the least recently used
    assert c == b and r.lookup(20) is None and r.evictions == 1
    assert r.start(10) == a  # a sequence restarting in the same first block keeps its row


def test_busy_rows_are_never_recycled():
    r = SinkRows(2)
    a, b = r.start(1), r.start(2)
    assert r.start(3, busy={a, b}) is None and r.lookup(1) == a and r.lookup(2) == b
    assert r.start(3, busy={b}) == a and r.lookup(1) is None


def test_lookup_of_an_unknown_block():
    assert SinkRows(1).lookup(5) is None
