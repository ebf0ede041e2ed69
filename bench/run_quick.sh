#!/bin/sh
# The benchmarks' smoke test, for CI: each runs in seconds with tiny sizes
# and fails only if the benchmark itself breaks; timings are never asserted.
# PYTHON=.venv/bin/python bench/run_quick.sh
set -eu
cd "$(dirname "$0")/.."
for bench in throughput rsync_pull fleet latency; do
    "${PYTHON:-python3}" "bench/$bench.py" --quick
done
