#!/usr/bin/env bash
# The committed training runs of the small sizes (results/<machine>/train-<task>), as they were
# made on a 2-core CPU: two `train` commands at a time, one thread each (a small model gains
# little from a second thread, and two jobs side by side use both cores). Then the reports.
#
#   bash scripts/train_small.sh cpu-epyc-2core
set -euo pipefail
cd "$(dirname "$0")/.."
machine=${1:?give the machine's folder name, e.g. cpu-epyc-2core}
out=results/$machine
train() { python -m attnbench train --threads 1 --seeds 0,1,2 --out "$out/train-$1" --task "$@"; }
(train mqar --variants full,linear,performer,sliding_window; train listops --variants all;
 train lm --variants full,sliding_window,linear,xl) &
(train image --variants all; train pathfinder32 --variants all) &
wait
python scripts/regenerate_reports.py
