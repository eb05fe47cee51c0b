#!/usr/bin/env bash
# The committed attention-statistics runs of a machine, from its training runs' seed-0 checkpoints
# (results/<machine>/train-*/jobs/*-s0; the jobs/ directories are local, not committed) and from
# seeded inputs. Each run directory is rebuilt from scratch, then compacted for committing
# (results.jsonl.gz, `python -m attnbench compact`); then `python scripts/regenerate_reports.py`.
#
#   bash scripts/stats_runs.sh results/cpu-epyc-2core
set -euo pipefail
R=${1:?usage: scripts/stats_runs.sh results/<machine>}
S="python -m attnbench stats"

checkpoints() {  # every seed-0 job of the given runs, one path a line
  for run in "$@"; do
    for job in "$R/$run"/jobs/*-s0; do [ -f "$job/best.pt" ] && echo "$job"; done
  done
}

as_args() {  # paths on stdin -> --checkpoint PATH ... (one word a line)
  while read -r p; do printf -- '--checkpoint\n%s\n' "$p"; done
}

# ListOps: every pattern's own attention; sparse and approximate patterns on the exact model's q, k, v
rm -rf "$R/stats-listops"
FULL="$R/train-listops/jobs/listops-small-full@sdpa-s0"
$S --checkpoint "$FULL" --seq-len 25,50,100,200 --out "$R/stats-listops" --variants \
  'own,sliding_window[window=8,16,32,64],longformer[window=16,32,64],bigbird[block=8,16,32],performer[nb_features=16,32,64,128,256],lsh[n_hashes=1,2,4,8]'
mapfile -t OWN < <(checkpoints train-listops train-listops-b train-listops-c train-listops-e |
                   grep -v -e 'full@sdpa' -e 'train-listops/jobs/listops-small-lsh' | as_args)
$S "${OWN[@]}" --variants own --out "$R/stats-listops"

# digits ViT with a CLS token: CLS maps, rollout; patterns on the exact model's q, k, v
rm -rf "$R/stats-vision-cls"
mapfile -t CLS < <(checkpoints train-vision-vit-cls | as_args)
$S "${CLS[@]}" --variants own --out "$R/stats-vision-cls"
$S --checkpoint "$R/train-vision-vit-cls/jobs/vision-vit-small-full@sdpa-s0" --out "$R/stats-vision-cls" --variants \
  'sliding_window[window=4,8,16,32],bigbird[block=4,8,16],longformer[window=4,8,16],performer[nb_features=8,16,32,64,128],linear,lsh[n_hashes=1,2,4,8,bucket_size=16]'

# the mean-pooled ViT, Swin and PVT: their own attention per layer (stage)
rm -rf "$R/stats-vision"
mapfile -t VIS < <(checkpoints train-vision-vit train-vision-vit-b train-vision-swin train-vision-pvt train-vision-pvt-pool |
                   as_args)
$S "${VIS[@]}" --variants own --out "$R/stats-vision"

# seeded inputs: error and coverage vs n and vs parameters
rm -rf "$R/stats-random"
$S --random --input sharp --heads 4 --head-dim 64 --batch 1 --seq-len 256,512,1024,2048 --out "$R/stats-random" \
  --variants 'full,performer[nb_features=16,32,64,128,256],linear,lsh[n_hashes=1,2,4,8],lsh[bucket_size=16,32,128],sliding_window[window=32,128],longformer[window=64,128],bigbird[block=16,64]'
$S --random --input gaussian --heads 4 --head-dim 64 --batch 1 --seq-len 256,512,1024,2048 --out "$R/stats-random" \
  --variants 'performer[nb_features=16,32,64,128,256],linear,lsh[n_hashes=1,2,4,8]' --stats entropy,error,divergence,coverage

# committed files stay small: each run's rows gzipped (read like results.jsonl), its parquet rewritten
python -m attnbench compact "$R/stats-listops" "$R/stats-vision-cls" "$R/stats-vision" "$R/stats-random"
