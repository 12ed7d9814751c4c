#!/bin/sh
# The recipe of the shipped default ensemble (models/): three width-32 digitnets (digitnet_wide,
# seeds 1-3, EPOCHS epochs, the robust augmentations plus elastic distortion on half the samples,
# an EMA of the weights validated and shipped; each run keeps its epoch best by validation, never
# by test). Two members train side by side with one thread each, then the third with both cores:
# ~1 h on two AVX2 cores (ops/BENCHMARKS.md). They train in data/recipe/, then replace models/.
# Usage: ./dev run sh ops/train_shipped_ensemble.sh [EPOCHS]
#   MNIST from APP__DATA_ROOT (add --download below where it is missing); logs in data/logs/.
set -eu
epochs=${1:-16}
out=data/recipe
rm -rf "$out"
mkdir -p "$out" data/logs
echo "recipe started $(date -u +%FT%TZ), $epochs epochs"
member() {
  digits train --model-id "mnist_digitnet_$1" --arch digitnet_wide --epochs "$epochs" --seed "$2" \
    --augment --elastic 0.5 --ema-decay 0.999 --threads "$3" --model-dir "$out" --activate \
    --notes "shipped ensemble member $1" > "data/logs/train_$1.log" 2>&1
}
member a 1 1 & pa=$!
member b 2 1 & pb=$!
wait "$pa"; wait "$pb"
member c 3 2
python - "$out" <<'PY'
import json, pathlib, shutil, sys
out, models = pathlib.Path(sys.argv[1]), pathlib.Path("models")
runs = {p.parent.parent.name: json.loads(p.read_text()) for p in out.glob("*/*/manifest.json")}
ranked = sorted(runs, key=lambda m: runs[m]["val_acc"], reverse=True)
for old in models.glob("mnist_*"):
    shutil.rmtree(old)
for model_id in ranked[:3]:
    shutil.move(str(out / model_id), models / model_id)
for model_id in ranked:
    m = runs[model_id]
    print(model_id, "val", m["val_acc"], "test", m["test_acc"], "kept" if model_id in ranked[:3] else "dropped")
PY
echo "recipe done $(date -u +%FT%TZ)"
