#!/usr/bin/env bash
# Runs ON the device. Collects the bundle chunks that prepare.py wrote, one (or
# more) per call, and installs the bundle once all of them are there.
#
#   bash stage.sh [CHUNK_DIR ...]
#
# CHUNK_DIR: a folder .stage/chunks/NN carried by this call (part + manifest.json).
# With no argument, every .stage/chunks/NN/ of the device's copy of the repo is
# taken (the device keeps ignored paths of earlier calls while it stays warm).
#
# Idempotent: a chunk already in /tmp/stage with the right sha256 is skipped;
# once installed (marker /tmp/site/.bundle-<id>), nothing is done again.
# Exit status: 0 when the bundle is installed, 3 while chunks are missing,
# 1 on an error (a bad sha256, a failed install).
#
# Layout on the device:
#   /tmp/stage/part.NN            the chunks (sha256-checked)
#   /tmp/stage/bundle/            the unpacked tar: wheels/, qeval-cache/, bundle.json
#   /tmp/site                     pip install --target of every wheel (PYTHONPATH, env.sh)
#   /tmp/qeval-cache              QEVAL_CACHE: models/smollm2-135m-instruct, tasks/bigbench-mc-v2
set -euo pipefail
STAGE=${QEVAL_STAGE_DIR:-/tmp/stage}
SITE=${QEVAL_SITE:-/tmp/site}
CACHE=${QEVAL_CACHE:-/tmp/qeval-cache}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
mkdir -p "$STAGE"
t0=$(date +%s.%N)
elapsed() { python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t0"; }

dirs=("$@")
if [ ${#dirs[@]} -eq 0 ]; then
  shopt -s nullglob
  dirs=("$REPO"/.stage/chunks/[0-9][0-9])
fi

manifest=""
for d in "${dirs[@]}"; do
  [ -f "$d/manifest.json" ] && [ -f "$d/part" ] || { echo "stage: $d has no part/manifest.json"; continue; }
  cp -f "$d/manifest.json" "$STAGE/manifest.json.new"
  if [ -f "$STAGE/manifest.json" ] && ! cmp -s "$STAGE/manifest.json" "$STAGE/manifest.json.new"; then
    echo "stage: a new bundle (manifest changed): dropping the old chunks"
    rm -f "$STAGE"/part.* "$STAGE"/part.*.ok
  fi
  mv -f "$STAGE/manifest.json.new" "$STAGE/manifest.json"
  manifest="$STAGE/manifest.json"
  idx=$(basename "$d")
  want=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['chunks'][int(sys.argv[2])]['sha256'])" "$manifest" "$idx")
  if [ -f "$STAGE/part.$idx.ok" ] && [ "$(cat "$STAGE/part.$idx.ok")" = "$want" ]; then
    echo "stage: chunk $idx already here"
    continue
  fi
  got=$(sha256sum "$d/part" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "stage: chunk $idx sha256 $got != manifest $want" >&2
    exit 1
  fi
  cp -f "$d/part" "$STAGE/part.$idx"
  echo "$want" > "$STAGE/part.$idx.ok"
  echo "stage: chunk $idx ok ($(stat -c %s "$STAGE/part.$idx") bytes)"
done

[ -n "$manifest" ] || manifest="$STAGE/manifest.json"
[ -f "$manifest" ] || { echo "stage: no manifest yet"; exit 3; }
read -r bid n <<<"$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['bundle_id'], m['n_chunks'])" "$manifest")"
if [ -f "$SITE/.bundle-$bid" ]; then
  echo "stage: bundle $bid installed already ($SITE)"
  exit 0
fi
missing=()
for ((i = 0; i < n; i++)); do
  idx=$(printf %02d "$i")
  [ -f "$STAGE/part.$idx.ok" ] || missing+=("$idx")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "stage: have $((n - ${#missing[@]}))/$n chunks of bundle $bid; missing: ${missing[*]} ($(elapsed) s)"
  exit 3
fi

echo "stage: all $n chunks of bundle $bid here: unpacking"
rm -rf "$STAGE/bundle"
for ((i = 0; i < n; i++)); do cat "$STAGE/part.$(printf %02d "$i")"; done | tar -x -C "$STAGE"
# assets were xz-compressed by prepare.py (NAME.xz): decompress them in parallel
# (xz -T0 where xz is installed, else Python's lzma)
python3 - "$STAGE/bundle/qeval-cache" <<'PY'
import concurrent.futures as cf, lzma, os, pathlib, shutil, subprocess, sys
def unxz(p):
    if shutil.which("xz") and subprocess.run(["xz", "-d", "-f", "-T0", str(p)]).returncode == 0:
        return
    with lzma.open(p) as fi, open(str(p)[:-3], "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
    os.remove(p)
files = list(pathlib.Path(sys.argv[1]).rglob("*.xz"))
with cf.ThreadPoolExecutor(8) as ex:
    list(ex.map(unxz, files))
print(f"stage: {len(files)} asset files decompressed")
PY
echo "stage: unpacked ($(elapsed) s)"

rm -rf "$SITE"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
  --target "$SITE" "$STAGE"/bundle/wheels/*.whl
echo "stage: pip installed $(ls "$STAGE"/bundle/wheels/*.whl | wc -l) wheels into $SITE ($(elapsed) s)"

# qeval's cache: the model and the task pack; the task YAMLs name their data by
# absolute path (written where prepare.py found the pack): point them here.
mkdir -p "$CACHE/models" "$CACHE/tasks"
for kind in models tasks; do
  for src in "$STAGE/bundle/qeval-cache/$kind"/*; do
    [ -e "$src" ] || continue
    rm -rf "$CACHE/$kind/$(basename "$src")"
    cp -a "$src" "$CACHE/$kind/"
  done
done
python3 - "$STAGE/bundle/bundle.json" "$CACHE" <<'EOF'
import json, sys, pathlib
info = json.load(open(sys.argv[1]))
tasks = info.get("assets", {}).get("tasks")
if tasks:
    pack = pathlib.Path(sys.argv[2]) / "tasks" / tasks["name"]
    old = tasks["yaml_data_prefix_here"]
    n = 0
    for y in pack.rglob("*.yaml"):
        text = y.read_text()
        if old in text:
            y.write_text(text.replace(old, str(pack)))
            n += 1
    print(f"stage: task pack {pack}: {n} YAML data paths rewritten")
EOF

# ModelOpt's CUDA extensions from an earlier device run: unpacked and touched
# (newer than the freshly installed sources, so ninja sees nothing to rebuild).
if [ -f "$STAGE/bundle/torch_ext.tgz" ]; then
  ext=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
  mkdir -p "$ext"
  tar -xzf "$STAGE/bundle/torch_ext.tgz" -C "$ext" --strip-components=1
  find "$ext" -exec touch {} +
  echo "stage: ModelOpt CUDA extensions restored into $ext"
fi

# Triton / FlashInfer / vLLM JIT caches of an earlier device run (same image and
# GPU): a fresh machine's first vLLM start then skips ~100 s of kernel JIT.
if [ -f "$STAGE/bundle/jit_cache.tgz" ]; then
  tar -xzf "$STAGE/bundle/jit_cache.tgz" -C "$HOME" && echo "stage: JIT caches restored into $HOME" \
    || echo "stage: JIT caches could not be restored (ignored)"
fi

# qeval itself runs from the repo copy (PYTHONPATH, env.sh); this dist-info
# registers its pytest plugin and console script with importlib.metadata.
di="$SITE/qeval-0.1.0.dist-info"
mkdir -p "$di"
printf 'Metadata-Version: 2.1\nName: qeval\nVersion: 0.1.0\n' > "$di/METADATA"
printf '[console_scripts]\nqeval = qeval.cli:main\n\n[pytest11]\nqeval = qeval.pytest_plugin\n' > "$di/entry_points.txt"
: > "$di/RECORD"

touch "$SITE/.bundle-$bid"
echo "stage: bundle $bid installed ($(elapsed) s)"
