#!/usr/bin/env bash
# sketchlab's GPU checks and benchmarks in one call (what the H100 numbers in the notes came from).
# usage: OUT=dir benchmarks/run_gpu.sh STAGE...
#   stages: tests raster rnn-hyper rnn-lstm rnn-sample diffusion diffusion-variants rpcl evaluate
# Data: SKETCHLAB_SHARED_DATA (default .gpu/shared) holds sketchrnn/aaron_sheep.npz;
#       SPG20 (default .gpu/spg20) holds the npz files of `sketchlab data import shared/data/spg20`.
set -u
OUT=${OUT:-/tmp/sketchlab-gpu}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OUT
export SKETCHLAB_SHARED_DATA=${SKETCHLAB_SHARED_DATA:-.gpu/shared}
SPG20=${SPG20:-.gpu/spg20}
run() { local name=$1 limit=$2; shift 2
        echo "=== $name ($(date +%T))"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -25; }
for stage in "$@"; do
  case $stage in
    tests)      run gpu_tests 200 python -m pytest -q -x -m gpu tests ;;
    raster)     run raster 100 python benchmarks/raster.py ;;
    rnn-hyper)  run rnn_hyper 240 python benchmarks/rnn.py --cells hyper --sizes 2048 --only-train ;;
    rnn-lstm)   run rnn_lstm 240 python benchmarks/rnn.py --cells lstm,layer_norm --sizes 2048 --only-train ;;
    rnn-sample) run rnn_sample 100 python benchmarks/rnn.py --only-sample ;;
    diffusion)  run diffusion 300 python benchmarks/diffusion.py ;;
    # whole-loop vs per-step graphs and two compile modes, in one run (the >= 5x question)
    diffusion-variants) run diffusion 540 python benchmarks/diffusion.py --compile --cudnn-benchmark \
                          --per-step --compile-mode max-autotune-no-cudagraphs ;;
    rpcl)       run rpcl 300 python benchmarks/rpcl.py --models rpcl-pix2seq --length 144 \
                          --variants bptt+bf16,bptt+bf16+graph,trainer ;;
    evaluate)   run evaluate 200 python benchmarks/evaluate.py --data-dir "$SPG20" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
