#!/usr/bin/env bash
# The prepared check for a lent GPU machine (the device tool), in one call:
#   1. tests/test_cuda.py (each stage on CUDA, agreeing with the CPU);
#   2. the README main job on the GPU (generator, then refine + calibrate + reconstruct + evaluate), timed;
#   3. ImageNet size: a random-weight tv:resnet18 at 224 through every stage (bench/scale_bench.py), timed;
#   4. with more than one GPU, the generator trained by 2 processes under accelerate launch (NCCL), then a
#      student reconstructed and distilled by 2 processes from it;
#   5. the whole test suite with CUDA present (commands that default to the GPU).
# Nothing here is needed on the development machines or in CI.
#
# Usage (from the repository root): bash bench/gpu_check.sh ASSETS_TAR OUT_DIR [BUDGET_SECONDS]
#   ASSETS_TAR: a tar of assets/weights and assets/cifar10-jpeg/test from ../shared (unpacked to ../shared,
#   where the tests and the README commands look); made here with
#   tar -cf .gpu/assets.tar -C ../shared assets/weights assets/cifar10-jpeg/test
# Each stage gets at most its own cap and what is left of the budget; logs go to OUT_DIR/<stage>.log.
set -uo pipefail
tarball=$1
out=$2
budget=${3:-330}
start=$(date +%s)
mkdir -p ../shared "$out" && tar -xf "$tarball" -C ../shared || exit 1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 GZNQ_OFFLINE=1
nvidia-smi -L
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"

stage() {
    local name=$1 cap=$2
    shift 2
    local left=$((budget - ($(date +%s) - start)))
    ((left < cap)) && cap=$left
    if ((cap < 10)); then
        echo "== $name: skipped, budget spent"
        return
    fi
    local t0
    t0=$(date +%s)
    timeout "$cap" "$@" >"$out/$name.log" 2>&1
    echo "== $name: rc=$? seconds=$(($(date +%s) - t0)) (cap $cap)"
    tail -n 8 "$out/$name.log"
}

stage cuda_tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
rm -rf runs/gpu_generator runs/gpu_student  # a warm machine keeps the last run's folders
stage generator 120 python3 train.py generator --model cifar10_resnet20 --out runs/gpu_generator --no-progress
stage quantize 200 python3 train.py quantize --model cifar10_resnet20 --source generator:runs/gpu_generator \
    --w-bits 4 --a-bits 4 --protocol paper --method reconstruct --eval-data ../shared/assets/cifar10-jpeg/test \
    --out runs/gpu_student
cp runs/gpu_student/report.json "$out/quantize_report.json" 2>/dev/null
cp runs/gpu_generator/samples.png "$out/generator_samples.png" 2>/dev/null
stage scale_224 90 python3 -m bench.scale_bench --model tv:resnet18 --steps 3 --images 128 --out "$out/scale_resnet18"
if (($(nvidia-smi -L | wc -l) > 1)); then
    rm -rf runs/gpu_generator_2p
    stage two_gpus 60 accelerate launch --multi_gpu --num_processes 2 train.py generator --model cifar10_resnet20 \
        --steps 100 --out runs/gpu_generator_2p --no-progress
    rm -rf runs/gpu_distill_2p
    stage two_gpus_distill 90 accelerate launch --multi_gpu --num_processes 2 train.py quantize \
        --model cifar10_resnet20 --source generator:runs/gpu_generator_2p --w-bits 4 --a-bits 4 --protocol paper \
        --method reconstruct,distill --calib-images 512 --batch-size 128 --distill-steps 100 \
        --eval-data ../shared/assets/cifar10-jpeg/test --out runs/gpu_distill_2p --no-progress
else
    echo "== two_gpus, two_gpus_distill: skipped, one GPU"
fi
# 16 cores: 7 workers of 2 threads each (all threads per worker oversubscribed the cores 8-fold)
OMP_NUM_THREADS=2 stage suite 150 python3 -m pytest -q -rs -p no:cacheprovider -n 7 tests --ignore=tests/test_cuda.py
