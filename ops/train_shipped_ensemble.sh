#!/bin/sh
# The recipe of the shipped default ensemble (models/): four compact CNNs (digitnet, seeds 1-4,
# 15 epochs, augment=true), of which the three best by validation accuracy are kept (selection
# never looks at the test set). Two members train side by side, one thread each (two cores).
# Usage: ./dev run sh ops/train_shipped_ensemble.sh [EPOCHS]   (logs in data/logs/)
#        DATA_ROOT=/folder/holding/mnist ./dev run sh ops/train_shipped_ensemble.sh
set -eu
epochs=${1:-15}
data_root=${DATA_ROOT:-data}
mkdir -p data/logs
member() {
  digits train --model-id "mnist_digitnet_$1" --arch digitnet --epochs "$epochs" --seed "$2" \
    --augment --threads 1 --data-root "$data_root" --model-dir models --activate \
    --notes "shipped ensemble member $1" > "data/logs/train_$1.log" 2>&1
}
member a 1 & pa=$!
member b 2 & pb=$!
wait "$pa"; member c 3 & pc=$!
wait "$pb"; member d 4 & pd=$!
wait "$pc"; wait "$pd"
python - <<'PY'
import json, pathlib, shutil
# Each member's CURRENT version is the one just trained (--activate); earlier versions of a
# re-run recipe are removed, so models/ ships one version a member.
runs = {}
for member in pathlib.Path("models").glob("mnist_digitnet_?"):
    current = (member / "CURRENT").read_text().strip()
    runs[member.name] = json.loads((member / current / "manifest.json").read_text())["val_acc"]
    for old in member.iterdir():
        if old.is_dir() and old.name != current:
            shutil.rmtree(old)
ranked = sorted(runs, key=runs.get, reverse=True)
for model_id in ranked[3:]:
    shutil.rmtree(pathlib.Path("models") / model_id)
print("kept (by val_acc):", {m: runs[m] for m in ranked[:3]}, "dropped:", ranked[3:])
PY
