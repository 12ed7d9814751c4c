# Thin wrappers over the commands the README shows; `./dev` makes the venv on first use.

default:
    @just --list

# run everything on this machine: embedded Redis (unless REDIS_URL), the API, workers
up *ARGS:
    ./dev up {{ARGS}}

# the whole test suite (what CI runs)
test *ARGS:
    ./dev test {{ARGS}}

# ruff check, ruff format --check, mypy --strict
lint:
    ./dev lint

# format the code
fmt:
    ./dev run ruff format src tests ops
    ./dev run ruff check --fix src tests ops

# train one model locally: just train --model-id mnist_digitnet_v1 --epochs 1
train *ARGS:
    ./dev run digits train {{ARGS}}

# /v1/read latency and throughput over real HTTP (see ops/BENCHMARKS.md)
bench *ARGS:
    ./dev run python ops/bench_read.py {{ARGS}}

# regenerate the stream contracts in streams/ (JSON Schemas, AsyncAPI); `just schemas --check`
schemas *ARGS:
    ./dev run digits schemas {{ARGS}}

# regenerate the README's configuration table from the Settings class
settings-reference:
    ./dev run digits settings-reference --write README.md

# training throughput with and without augmentation
bench-train *ARGS:
    ./dev run python ops/bench_train.py {{ARGS}}

# streams: XADD -> started, event overhead, reload, reads during swaps, failover
bench-streams *ARGS:
    ./dev run python ops/bench_streams.py {{ARGS}}

# redis-cli against REDIS_URL or the embedded Redis of `digits up`
redis-cli *ARGS:
    ./dev run digits redis-cli {{ARGS}}
