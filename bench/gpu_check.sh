#!/usr/bin/env bash
# One prepared run for a lent GPU machine (at most 8 minutes, warm-up included): ResNet-18 training and
# inference throughput of `cleanse bench` on wgpu (two processes one after the other, to see what
# CubeCL's persistent autotune cache and the driver's pipeline cache save the second), at width 64
# and 16, batch 128; the same with the SPIR-V build (`--features spirv`: SPIR-V on Vulkan, and
# its compiled kernels kept on disk, `cubecl.toml`'s `[compilation] cache = true`) when its binary
# is given; then bench/pytorch_resnet18.py on CUDA (TF32 convolutions as PyTorch's default, plain
# fp32, and AMP bf16 and f16); width 64 also with `--precision f16` (convolutions in f16, the
# loss scaled). A second call (GPU_CHECK_PARTS="cuda accuracy", about 7 minutes) runs the CUDA
# build (`--features cuda`) in f32, f16 and bf16, and the accuracy of reduced precision: the
# subset's 30-epoch width-16 training and its BadNets attack at f32 and f16 (ACC and ASR from
# their reports). If asked, both throughputs on the CPU with every core. Every command has its
# own time limit, so one that hangs costs its slot and the rest still run. Results go into
# BENCHMARKS.md.
#
#   bash bench/gpu_check.sh path/to/cleanse OUTDIR [path/to/cleanse-spirv]
#   GPU_CHECK_PARTS="spirv torch" bash bench/gpu_check.sh ...   # some parts only
#   CUDA_BIN=path/to/cleanse-cuda DATA=path/to/cifar10-subset \
#     GPU_CHECK_PARTS="cuda accuracy" bash bench/gpu_check.sh path/to/cleanse OUTDIR
set -u
BIN=${1:?usage: gpu_check.sh CLEANSE_BINARY OUTDIR [SPIRV_BINARY]}
OUT=${2:?usage: gpu_check.sh CLEANSE_BINARY OUTDIR [SPIRV_BINARY]}
SPIRV=${3:-}
mkdir -p "$OUT"
export XDG_RUNTIME_DIR=/tmp
export PYTHONUNBUFFERED=1
CORES=$(nproc)
log() { echo "[$(date +%T)] $*"; }

# Which parts run: GPU_CHECK_PARTS="wgpu spirv torch cuda accuracy cpu" (default: the first
# three, about 8 minutes on the H200 of 2026-12-04 by its timings; the CPU part adds about a
# minute).
PARTS=${GPU_CHECK_PARTS:-wgpu spirv torch}
part() { [[ " $PARTS " == *" $1 "* ]]; }

# limit SECONDS NAME COMMAND...: runs COMMAND with a time limit, stdout to $OUT/NAME.json and
# stderr to $OUT/NAME.log; says how long it ran and how it ended.
limit() {
    local secs=$1 name=$2
    shift 2
    log "start $name (limit ${secs}s): $*"
    local t0=$SECONDS
    timeout -s INT "$secs" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
    local rc=$?
    log "end $name: rc=$rc after $((SECONDS - t0))s"
    sed 's/^/    /' "$OUT/$name.log" | tail -n 6
    tr -d ' \n' <"$OUT/$name.json" | sed 's/^/    /'
    echo
}

log "machine: $CORES cores"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/    /'
"$BIN" devices 2>&1 | sed 's/^/    /'

B="--batch-size 128 --steps 50 --warmup 3"
if part wgpu; then
    limit 150 wgpu-w64-first "$BIN" bench --width 64 $B --device wgpu
    limit 60 wgpu-w64-second "$BIN" bench --width 64 $B --device wgpu
    limit 45 wgpu-w16 "$BIN" bench --width 16 $B --device wgpu
    limit 60 wgpu-w64-f16 "$BIN" bench --width 64 $B --device wgpu --precision f16
    # CubeCL keeps autotune results under the workspace's target/environment when run inside a
    # Cargo workspace (as here), else under ~/.cache/cubecl.
    log "CubeCL cache: $(du -sh target/environment ~/.cache/cubecl 2>/dev/null | tr '\n' ' ')"
fi
if part spirv && [[ -n $SPIRV ]]; then
    # The compiled-kernel cache: cubecl.toml in the working directory (CubeCL looks here and in
    # every parent); the second process should start from it.
    printf '[compilation]\ncache = true\n' >cubecl.toml
    limit 150 spirv-w64-first "$SPIRV" bench --width 64 $B --device wgpu
    limit 60 spirv-w64-second "$SPIRV" bench --width 64 $B --device wgpu
    limit 45 spirv-w16 "$SPIRV" bench --width 16 $B --device wgpu
    # f16 operands: where CubeCL's SPIR-V reaches cooperative-matrix (tensor-core) matmuls.
    limit 60 spirv-w64-f16 "$SPIRV" bench --width 64 $B --device wgpu --precision f16
    log "CubeCL cache after SPIR-V: $(du -sh target/environment ~/.cache/cubecl 2>/dev/null | tr '\n' ' ')"
    rm -f cubecl.toml
    # The SPIR-V parity tests (tests/tests/spirv.rs), when their binary is carried along:
    # SPIRV_TESTS=path/to/spirv-<hash> (cargo test --release -p cleanse-tests --features spirv
    # --test spirv --no-run prints it).
    if [[ -n ${SPIRV_TESTS:-} ]]; then
        limit 120 spirv-tests "$SPIRV_TESTS" --test-threads=1
    fi
fi
if part torch; then
    P="python3 bench/pytorch_resnet18.py --device cuda --batch-size 128 --steps 50 --warmup 3"
    limit 30 torch-cuda-w64 $P --width 64
    limit 30 torch-cuda-w64-fp32 $P --width 64 --no-tf32
    limit 30 torch-cuda-w64-bf16 $P --width 64 --amp bf16
    limit 30 torch-cuda-w64-f16 $P --width 64 --amp f16
    limit 30 torch-cuda-w16 $P --width 16
fi
if part cuda; then
    if [[ -n ${CUDA_BIN:-} ]]; then
        # CUDA_BIN=path/to/cleanse built with --features cuda; libdevice for the LLVM path comes
        # from the driver's CUDA or pip's nvidia-nvvm.
        limit 150 cuda-w64-first "$CUDA_BIN" bench --width 64 $B --device cuda
        limit 60 cuda-w64-second "$CUDA_BIN" bench --width 64 $B --device cuda
        limit 60 cuda-w64-f16 "$CUDA_BIN" bench --width 64 $B --device cuda --precision f16
        limit 60 cuda-w64-bf16 "$CUDA_BIN" bench --width 64 $B --device cuda --precision bf16
        limit 45 cuda-w16 "$CUDA_BIN" bench --width 16 $B --device cuda
    else
        log "cuda: no CUDA_BIN given"
    fi
fi
if part accuracy; then
    if [[ -n ${DATA:-} ]]; then
        # The subset's clean training (README's 30-epoch width-16 run) and its BadNets attack,
        # f32 and f16 on wgpu; the last line of each log has the run's clean accuracy and ASR.
        T="--dataset cifar10 --data $DATA --eval-every 10 --device wgpu"
        for p in f32 f16; do
            limit 100 acc-train-$p "$BIN" train $T --width 16 --epochs 30 --precision $p \
                --out "$OUT/acc-train-$p"
            limit 100 acc-badnets-$p "$BIN" attack badnets $T --preset subset --precision $p \
                --out "$OUT/acc-badnets-$p"
        done
    else
        log "accuracy: no DATA given (the cifar10-subset folder)"
    fi
fi
if part cpu; then
    C="--batch-size 128 --steps 5 --warmup 2"
    limit 35 cpu-w64 "$BIN" bench --width 64 $C --device cpu --threads "$CORES"
    limit 35 torch-cpu-w64 python3 bench/pytorch_resnet18.py --width 64 $C --threads "$CORES"
fi
log "done"
