#!/usr/bin/env bash
# Create bench/litellm/.venv and install the pinned LiteLLM proxy into it.
# Idempotent: does nothing when the venv already holds exactly these pins.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3}"
REQ="$HERE/requirements.txt"
CON="$HERE/constraints.txt"
STAMP="$VENV/.bench-installed"

die() { echo "litellm/setup.sh: ERROR: $*" >&2; exit 1; }

want="$(cat "$REQ" "$CON" | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/litellm" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "litellm/setup.sh: already installed ($("$VENV/bin/python" -c 'import importlib.metadata as m; print("litellm", m.version("litellm"))'))"
    exit 0
fi

command -v "$PY" >/dev/null || die "$PY not found"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || die "need Python >= 3.9 (got $("$PY" -V 2>&1))"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "litellm/setup.sh: creating venv $VENV"
    "$PY" -m venv "$VENV" || die "python -m venv failed (on Debian: apt-get install python3-venv)"
fi

echo "litellm/setup.sh: installing $(grep -v '^#' "$REQ" | tr '\n' ' ')(+ $(grep -vc '^#' "$CON") locked deps)"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$REQ" -c "$CON"; then
    die "pip install of $(tr '\n' ' ' < "$REQ")failed (network to the package index? see pip output above)"
fi

# Sanity: the entry point works and no startup hook was dropped in (cf. litellm_init.pth, 1.82.8).
ver="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')" \
    || die "litellm not importable after install"
pinned="$(sed -n 's/^litellm\[proxy\]==//p' "$REQ")"
[[ "$ver" == "$pinned" ]] || die "installed litellm $ver != pinned $pinned"
if ls "$VENV"/lib/python*/site-packages/ | grep -qi 'litellm.*\.pth$'; then
    die "unexpected litellm .pth file in site-packages; refusing to use this venv"
fi
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/litellm" --version >/dev/null 2>&1 </dev/null || die "'litellm --version' failed"

echo "$want" > "$STAMP"
echo "litellm/setup.sh: installed litellm $ver into $VENV"
