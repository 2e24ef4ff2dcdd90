#!/usr/bin/env bash
# Create the virtualenvs the benchmark runs peers from, one per peer, so that
# their pins (datumaro wants pandas<3 and an older pyarrow) never touch each
# other or the project's own environment.
#
#   bash bench/setup_venvs.sh [DIR]        # default DIR: ./.bench-venvs
#
# core:        the raw-parse probes and the runner's own needs (psutil, matplotlib)
# datumaro, labelformat, globox: the peers. SUPERVISION=1 adds supervision.
set -eu
DIR=${1:-./.bench-venvs}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PYTHON=${PYTHON:-python3}

mk() {  # mk NAME PACKAGES...
  local name=$1; shift
  [ -x "$DIR/$name/bin/python" ] || "$PYTHON" -m venv "$DIR/$name"
  "$DIR/$name/bin/pip" install -q --upgrade pip >&2
  "$DIR/$name/bin/pip" install -q "$@" >&2
}

mk core polars pyarrow ijson duckdb orjson pysimdjson msgspec pycocotools psutil pandas numpy matplotlib
"$DIR/core/bin/python" -c 'import ijson, sys; sys.exit(ijson.backend != "yajl2_c")' \
  || echo "warning: ijson is not using the yajl2_c backend" >&2
mk datumaro 'datumaro[cli]'
mk labelformat labelformat
mk globox globox
if [ "${SUPERVISION:-0}" = 1 ]; then
  mk supervision supervision opencv-python-headless pillow
fi
