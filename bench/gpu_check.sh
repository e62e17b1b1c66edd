#!/usr/bin/env bash
# Paper-scale S2Vec on one GPU: a synthetic world of >= 20k images, the paper's ViT (MAEConfig.paper, with
# the context stream), bf16 autocast, early stopping; prints images/s, an MFU estimate, the held-out
# masked loss against the mean-of-visible predictor, and downstream R2 against the baselines.
#   bash bench/gpu_check.sh            # on the device machine (`run` tool), ~8 min budget on one H200
# Needs the project venv (make venv). Nothing here runs in CI: CI has no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CELLS=${CELLS:-7000}   # per world; 3 worlds -> ~21k images
EPOCHS=${EPOCHS:-40}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no GPU visible"; exit 2; }
# Worlds are generated on the host's CPUs in parallel; the 8-minute goal is the MAE's train_s it prints.
timeout 590 "$PY" bench/bench_embeddings.py --seeds 0,1,2 --cells "$CELLS" --model paper --jobs 3 \
  --epochs "$EPOCHS" --device cuda --out "${OUT:-/tmp}/s2vec_gpu_check"
