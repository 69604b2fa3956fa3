#!/usr/bin/env bash
# Runs the GPU benchmarks whose figures are still owed, in groups that each fit one 10-minute
# call on the GPU machine: `bash benchmarks/gpu_owed.sh GROUP` from the repository root.
#   core    CP-ALS/Tucker 256³ vs TensorLy-PyTorch, randomized SVD stages, Pallas kernels
#   tt      TT-SVD / TT-matrix, batched CP (1,024 fits of 32³), t-SVD / t-product
#   nn      factorized layers vs tensorly-torch, PiSSA init vs PEFT, one-device sharding rows,
#           KV cache and decode time of the attentions, μMoE vs a dense MLP
# Baselines come as wheels in .whl/ (the machine has no network), e.g. for Python 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl tensorly==0.10.0 tensorly-torch peft
# Results (JSON and logs) go to $OUT (or ./out); copy the tables into benchmarks/RESULTS.md.
set -euo pipefail
group=${1:?usage: bash benchmarks/gpu_owed.sh core|tt|nn}
out=${OUT:-out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  pip install -q --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
run() {  # name, then the command: its output is kept whatever its exit status
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.log" || echo "!! $name failed (see $out/$name.log)"
}
case "$group" in
  core)
    run decompositions python benchmarks/bench_decompositions.py --gpu --no-numpy \
      --json "$out/decompositions.json"
    run svd_stages python benchmarks/bench_svd.py --stages
    run kernels python benchmarks/bench_kernels.py --json "$out/kernels.json" ;;
  tt)
    run tt python benchmarks/bench_tt.py --gpu --json "$out/tt.json"
    run batched_cp python benchmarks/bench_batched_cp.py --json "$out/batched_cp.json"
    run tubal python benchmarks/bench_tubal.py --json "$out/tubal.json" ;;
  nn)
    run nn python benchmarks/bench_nn.py --gpu --json "$out/nn.json"
    run optimizers python benchmarks/bench_optimizers.py --hidden 2048 --json "$out/optimizers.json"
    run sharding_training python benchmarks/bench_sharding.py --gpu --devices 1 \
      --json "$out/sharding_training.json"
    run sharding_decompositions python benchmarks/bench_sharding.py --decompositions --gpu \
      --devices 1 --json "$out/sharding_decompositions.json"
    run attention python benchmarks/bench_attention.py --lengths 1024,4096,16384 --batch 32 \
      --tokens 8192 --json "$out/attention.json" ;;
  *) echo "unknown group $group (core, tt or nn)" >&2; exit 2 ;;
esac
