# Shared by every recipe's merge.sh (sourced, not run): merge ADAPTER into its unquantized base, write OUTPUT,
# then generate a sample from the merged model with its own chat template.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"  # make install makes .venv
args=(--adapter "$ADAPTER" --output "$OUTPUT" --dtype "$DTYPE" --overwrite)
[ -n "$BASE" ] && args+=(--base "$BASE")
"$PYTHON" -m tunekit.merge "${args[@]}"
[ -n "${NO_SAMPLE:-}" ] || "$PYTHON" -m tunekit.generate "$OUTPUT" "$PROMPT"
