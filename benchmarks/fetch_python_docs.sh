#!/usr/bin/env bash
# Python 3.11's library reference as calibration text (reference/models-and-data.md): the Debian
# package python3.11-doc, checked against its sha256, unpacked, and its library/*.rst.txt sources
# copied flat to DEST. Needs apt-get (the Debian archive is the only network use).
#   bash benchmarks/fetch_python_docs.sh runs/python-docs
set -euo pipefail
DEST=${1:?usage: fetch_python_docs.sh DEST}
VERSION=3.11.2-6+deb12u8
SHA=50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && apt-get download "python3.11-doc=$VERSION" >/dev/null)
DEB=$(ls "$TMP"/python3.11-doc_*.deb)
echo "$SHA  $DEB" | sha256sum -c --quiet || { echo "fetch_python_docs: sha256 mismatch for $DEB" >&2; exit 1; }
dpkg -x "$DEB" "$TMP/x"
mkdir -p "$DEST.partial"
cp "$TMP"/x/usr/share/doc/python3.11/html/_sources/library/*.rst.txt "$DEST.partial/"
rm -rf "$DEST" && mv "$DEST.partial" "$DEST"
echo "fetch_python_docs: $(ls "$DEST" | wc -l) files in $DEST (python3.11-doc $VERSION, sha256 $SHA)"
