#!/usr/bin/env bash
# Reproduces sd_core/data/default_model.safetensors, the built-in texture model, from scratch on the procedural
# textures of sd_core/training/data.py (see sd_core/data/MODEL_CARD.md).
#
# Phase 1: autoencoder (2000 steps), then UNet + text encoder (3000 steps, uniform timesteps, cosine learning rate).
# Phase 2: the same code in fine-tuning mode (--init): 2500 more UNet + text encoder steps with noisy timesteps drawn
#          more often (--timestep-bias 1), where colours get decided.
# Measured here: phase 1 about 53 min, phase 2 about 30 min, on a 2-core CPU shared with other work.
#
# Rerunning with the same OUT resumes each phase from its last saved state (every 200 steps). One torch thread:
# on a CPU shared with other work, two threads were up to 30x slower (spin-waiting); another thread count can change
# the last bits of the result.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sd_core_default_model}
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=1

$PY -m sd_core.cli train --out "$OUT/phase1" --seed 1234 --preset default --size 64 \
    --vae-steps 2000 --vae-batch 16 --vae-crop 24 --vae-full-steps 600 --vae-full-batch 4 --vae-lr 2e-3 \
    --kl-weight 1e-4 --unet-steps 3000 --unet-batch 32 --unet-lr 5e-4 --warmup 100 --text train --uncond-prob 0.1 \
    --ema-decay 0.999 --pool-size 8192 --save-every 200 --log-every 50 --threads 1 --export-dtype fp16

$PY -m sd_core.cli train --out "$OUT/phase2" --init "$OUT/phase1/model.safetensors" --seed 1235 --size 64 \
    --text train --unet-steps 2500 --unet-batch 32 --unet-lr 3e-4 --lr-schedule constant --warmup 50 \
    --timestep-bias 1.0 --uncond-prob 0.1 --ema-decay 0.999 --pool-size 8192 --save-every 200 --log-every 50 \
    --threads 1 --export-dtype fp16

cp "$OUT/phase2/model.safetensors" sd_core/data/default_model.safetensors
echo "wrote sd_core/data/default_model.safetensors"
