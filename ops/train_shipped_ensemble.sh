#!/bin/sh
# The recipe of the shipped default ensemble (models/): three compact CNNs, different seeds.
# Two members train side by side (one thread each: two cores), then the third.
# Usage: ./dev run sh ops/train_shipped_ensemble.sh [EPOCHS]   (logs in data/logs/)
set -eu
epochs=${1:-15}
mkdir -p data/logs
member() {
  digits train --model-id "mnist_digitnet_$1" --arch digitnet --epochs "$epochs" --seed "$2" \
    --augment --threads 1 --model-dir models --activate \
    --notes "shipped ensemble member $1" > "data/logs/train_$1.log" 2>&1
}
member a 1 &
first=$!
member b 2 &
second=$!
wait "$first"
member c 3 &
third=$!
wait "$second"
wait "$third"
grep -h "^done:" data/logs/train_a.log data/logs/train_b.log data/logs/train_c.log
