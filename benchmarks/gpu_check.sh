#!/usr/bin/env bash
# The CUDA checks of the speed work, in one run on a machine with a GPU (about 5 minutes on an
# H100-class GPU): the train step in fp32 / amp / channels_last / compile and its host syncs and
# peak memory, the BoT (last stride 1) step, feature extraction, the loader with 8 and 16
# workers, and a 2-epoch --amp training run on generated data.
#
#   bash benchmarks/gpu_check.sh                 # the GPU checks
#   DEVICE=cpu STEPS=1 bash benchmarks/gpu_check.sh   # a dry run of the same commands on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-20}
WORK=${WORK:-$(mktemp -d)}
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    device_flag=(--gpu-devices 0)
else
    device_flag=(--use-cpu)
fi
python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cores", __import__("os").cpu_count())'

python benchmarks/bench_train.py --device "$DEVICE" --batch 64 --extract-batch 256 --steps "$STEPS" \
    --warmup "$(( STEPS < 5 ? 1 : 5 ))" --images 2000 --workers 8 16
python benchmarks/bench_train.py --device "$DEVICE" --batch 64 --last-stride 1 --part step \
    --modes amp+channels_last --steps "$STEPS" --warmup "$(( STEPS < 5 ? 1 : 5 ))"

python synthetic_data.py --root "$WORK/data" --datasets market1501
python train_img_model_xent_htri.py -d market1501 --root "$WORK/data" --no-pretrained --amp --channels-last \
    --max-epoch 2 --eval-step 2 --train-batch 64 --workers 8 --print-freq 1 --save-dir "$WORK/log" "${device_flag[@]}"
