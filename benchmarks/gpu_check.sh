#!/usr/bin/env bash
# The CUDA checks of the speed work, in one run on a machine with a GPU (about 5 minutes on an
# H100-class GPU): the train step in fp32 / amp / channels_last / compile and its host syncs and
# peak memory, the BoT (last stride 1) step, feature extraction, the loader with 8 and 16
# workers, and a 2-epoch --amp training run on generated data; the modern backbones' step and
# extraction (ViT-S/16, ViT-B/16, Swin-T, ResNet50-IBN-a at 256x128) and a 2-epoch ViT run; the
# exact gallery search of 10M x 512 fp16 features against torch.mm.
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

python benchmarks/bench_train.py --device "$DEVICE" --batch 128 --extract-batch 256 --part step \
    --modes fp32 amp --steps "$STEPS" --warmup "$(( STEPS < 5 ? 1 : 5 ))" \
    --arch vit_small vit_base swin_tiny resnet50_ibn_a
python benchmarks/bench_train.py --device "$DEVICE" --extract-batch 256 --part extract \
    --steps "$STEPS" --warmup "$(( STEPS < 5 ? 1 : 5 ))" --arch vit_small vit_base swin_tiny resnet50_ibn_a

python synthetic_data.py --root "$WORK/data" --datasets market1501
python train_img_model_xent_htri.py -d market1501 --root "$WORK/data" --no-pretrained --amp --channels-last \
    --max-epoch 2 --eval-step 2 --train-batch 64 --workers 8 --print-freq 1 --save-dir "$WORK/log" "${device_flag[@]}"
python train_img_model_xent_htri.py -d market1501 --root "$WORK/data" --no-pretrained --amp -a vit_small \
    --recipe vit --max-epoch 2 --eval-step 2 --train-batch 64 --workers 8 --print-freq 1 \
    --save-dir "$WORK/log_vit" "${device_flag[@]}"

# Exact search of a 10M x 512 gallery held on the GPU in fp16, against torch.mm on the same blocks.
python benchmarks/bench_search.py --size "$( [ "$DEVICE" = cuda ] && echo 10000000 || echo 20000 )" \
    --device "$DEVICE" --dtype "$( [ "$DEVICE" = cuda ] && echo fp16 || echo bf16 )" --paths memory --faiss \
    --memory-mb 4096 --repeat 3
