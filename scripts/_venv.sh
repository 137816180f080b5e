# Sourced by scripts/demo, scripts/test and scripts/bench: make sure .venv exists and holds
# kimpki (editable) with the extras named in $KIMPKI_EXTRAS. Reinstalls only when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KIMPKI_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
extras="${KIMPKI_EXTRAS:-}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "kimpki: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.kimpki-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) [$extras]"
if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
  echo "kimpki: installing kimpki${extras:+[$extras]} into $VENV" >&2
  spec="$ROOT"
  [ -n "$extras" ] && spec="$ROOT[$extras]"
  log="$(mktemp)"
  if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2 || true
    rm -f "$log"
    echo "kimpki: installing into $VENV failed" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$want" >> "$stamp"
fi
export PATH="$VENV/bin:$PATH"
# Byte-compile kimpki's own modules, as a wheel install does: with PYTHONDONTWRITEBYTECODE set
# (as on CI) every command would otherwise recompile them, ~30 ms per process. Only changed files
# are recompiled; stale .pyc files are ignored by Python anyway (their source mtime differs).
"$VENV/bin/python" -m compileall -q "$ROOT/kimpki" >/dev/null 2>&1 || true
