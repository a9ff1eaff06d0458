"""RULER task generators: prompts fill the target length, references are consistent with the text
(an oracle that reads only the prompt scores 100 on every task), seeds are deterministic, and
string_match_all scores known answers."""

import re
from collections import Counter

import pytest

from oscar_cluster.errors import ConfigError
from oscar_cluster.evaluation.ruler import NIAH_TASKS, TASKS, make_sample, string_match_all


@pytest.fixture(scope="module")
def count(smollm2):
    _, tok = smollm2
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def _oracle(task: str, prompt: str) -> str:
    """Answer from the prompt text alone, the way a perfect reader would."""
    if task in NIAH_TASKS:
        q = re.search(r"What are all the special magic \w+ for (.+?) mentioned in the provided text\?", prompt).group(1)
        keys = [k.strip() for k in re.split(r",\s*(?:and\s+)?", q)]
        found = re.findall(r"One of the special magic \w+ for (\S+) is: (\S+?)\.(?=\s|$)", prompt)
        return " ".join(v for k, v in found if k in keys)
    if task == "vt":
        value = re.search(r"assigned the value (\d+) in the text above", prompt).group(1)
        names, frontier = [], {value}
        assigns = re.findall(r"VAR (\w+) = (?:VAR )?(\w+)\.", prompt)
        changed = True
        while changed:
            changed = False
            for lhs, rhs in assigns:
                if rhs in frontier and lhs not in frontier:
                    frontier.add(lhs)
                    names.append(lhs)
                    changed = True
        return " ".join(names)
    if task == "cwe":
        words = re.findall(r"\d+\. (\w+)", prompt.split("Question:")[0])
        return " ".join(w for w, _ in Counter(words).most_common(10))
    words = [w for w in re.findall(r"\b[a-z]{6}\b", prompt.split("Question:")[0].split("coded words.", 1)[1])]
    c = Counter(words)
    return " ".join(sorted(c, key=lambda w: (-c[w], w))[:3])


@pytest.mark.model
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [1024, 2048])
def test_prompt_fills_the_length_and_the_oracle_scores_100(task, length, count):
    s = make_sample(task, count, length, seed=3)
    assert s.tokens + s.max_new_tokens <= length
    assert s.tokens + s.max_new_tokens > 0.8 * length, f"haystack under-filled: {s.tokens} tokens"
    assert string_match_all(_oracle(task, s.prompt), s.references) == 100.0
    assert s.prompt.endswith(("are", "they are: ", "are:"))
    if task in NIAH_TASKS:
        for ref in s.references:
            assert s.prompt.count(ref) == 1, "each reference value is in exactly one needle"


@pytest.mark.model
def test_seeds_are_deterministic_and_distinct(count):
    a, b = (make_sample("niah_multikey_1", count, 1024, seed=s) for s in (1, 1))
    c = make_sample("niah_multikey_1", count, 1024, seed=2)
    assert a.prompt == b.prompt and a.references == b.references
    assert c.references != a.references


def test_string_match_all():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456"]) == 100.0
    assert string_match_all("only 123", ["123", "456"]) == 50.0
    assert string_match_all("nothing", ["123"]) == 0.0
    assert string_match_all("ALPHA beta", ["alpha", "Beta"]) == 100.0
    with pytest.raises(ConfigError):
        string_match_all("x", [])


def test_bad_requests():
    with pytest.raises(ConfigError, match="unknown RULER task"):
        make_sample("niah_single_9", len, 4096, 0)
    with pytest.raises(ConfigError, match="too short"):
        make_sample("vt", len, 100, 0)


@pytest.mark.model
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_needle_grid_places_the_needle_at_its_depth(depth, count):
    from oscar_cluster.evaluation.ruler import make_grid_sample

    s = make_grid_sample(count, 1024, depth, seed=4)
    assert s.tokens + s.max_new_tokens <= 1024 and s.tokens > 700
    assert string_match_all(_oracle("niah_single_2", s.prompt), s.references) == 100.0
    context = s.prompt.split("afterwards.\n", 1)[1].split("\nWhat are all", 1)[0]
    at = context.index(s.references[0]) / len(context)
    assert abs(at - depth) < 0.1, f"needle at {at:.2f} of the haystack, asked for {depth}"
    assert context.count("One of the special magic numbers") == 4, "one needle and three distractors"
