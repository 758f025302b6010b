#!/bin/bash
# `memtrace verify --device cpu` over the cases of benchmarks/results/cpu-avx512-bf16/, on this machine:
# bash benchmarks/results/cpu-avx2/verify_cases.sh > verify.jsonl   (MEMTRACE=path/to/memtrace to choose one)
cd "$(dirname "$0")/../../.."
M=benchmarks/models
run() { name=$1; shift
  for amp in fp32 bf16; do for mode in train infer; do
    a=(); [ $amp = bf16 ] && a=(--amp bf16)
    out=$(timeout 600 ${MEMTRACE:-memtrace} verify "$@" "${a[@]}" --mode $mode --device cpu --json 2>/dev/null)
    echo "{\"case\": \"$name\", \"precision\": \"$amp\", \"mode\": \"$mode\", \"verify\": ${out:-null}}"
  done; done; }
run unet_small $M/unet.py:small --input 4x3x64x64 --loss mse
run unet_diffusion $M/unet.py:diffusion --input 2x3x32x32 --input 2:int64 --loss mse
run seed_cnn $M/seed_cnn.py:build --input 2x3x144x256 --loss ce
run gpt2 $M/hf_gpt2.py:build --input 4x128:int64
run llama $M/hf_llama.py:build --input 2x128:int64
run lstm $M/lstm_tagger.py:build --input 4x32:int64 --loss ce
