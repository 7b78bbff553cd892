#!/usr/bin/env bash
# Identify photos with a running ecomarine service (`ecomarine serve`), from the shell.
# Usage: ECOMARINE_URL=http://127.0.0.1:8000 [ECOMARINE_TOKEN=...] bash predict.sh PHOTO...
set -euo pipefail
url="${ECOMARINE_URL:-http://127.0.0.1:8000}"
auth=()
if [ -n "${ECOMARINE_TOKEN:-}" ]; then
  auth=(-H "Authorization: Bearer ${ECOMARINE_TOKEN}")
fi

# One photo: its prediction, as one JSON object.
curl -sS --fail-with-body "${auth[@]}" -F "file=@$1" "$url/v1/predict"
echo

# Several photos: one JSON line per photo, in order, each sent as soon as it is answered.
files=()
for photo in "$@"; do
  files+=(-F "files=@${photo}")
done
curl -sS --fail-with-body -N "${auth[@]}" "${files[@]}" "$url/v1/predict-batch"
