#!/usr/bin/env bash
# The recorded commands that train the models shipped in resources/models/, through bodyage's own
# commands only (what a user can repeat). One torch thread on a 2-core CPU:
#   wholebody  ~10 min to generate 1,000 + 250 synthetic subjects, ~55 min to train, 2 min to check
#   brain      ~3 min to build the IXI template, ~25 min to train 5 folds x 3 members
# Usage: scripts/train_shipped_models.sh wholebody|brain [WORKDIR]   (default bench/_work)
# The QC reference (ood.safetensors) is fitted when training finishes, laterality statistics
# included; the whole-body bundle shipped now was made before those existed and got them
# afterwards, weights untouched, from scripts/add_laterality_reference.py wholebody.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/bodyage
WHAT=${1:?wholebody or brain}
WORK=${2:-bench/_work}
export OMP_NUM_THREADS=1
case "$WHAT" in
  wholebody)
    # training cohort (seed 20) and a fresh cohort it never sees (seed 21)
    $B synth "$WORK/wb_train" --n 1000 --seed 20
    $B synth "$WORK/wb_eval" --n 250 --seed 21
    $B train "$WORK/wb_train" --run wholebody-synthetic --folds 1 --members 5 \
      --test-fraction 0.1 --threads 1 --seed 20
    $B export "$WORK/wb_train" --run wholebody-synthetic resources/models/wholebody-synthetic \
      --card scripts/cards/wholebody-synthetic.json --overwrite
    .venv/bin/python bench/bench_shipped_models.py wholebody --work "$WORK"
    ;;
  brain)
    D=../shared/data/ixi_t1_2mm
    [ -f "$WORK/ixi_ws/cohort.sqlite" ] || $B import "$WORK/ixi_ws" --images "$D/t1" \
      --csv "$D/participants.csv" --kind t1 --id-column MRID --age-column Age --sex-column Sex
    $B train "$WORK/ixi_ws" --run brain-t1-ixi --align template --folds 5 --members 3 \
      --val-fraction 0.1 --threads 1
    $B report "$WORK/ixi_ws" --run brain-t1-ixi
    $B export "$WORK/ixi_ws" --run brain-t1-ixi resources/models/brain-t1-ixi \
      --card scripts/cards/brain-t1-ixi.json --overwrite
    .venv/bin/python bench/bench_shipped_models.py brain --work "$WORK"
    ;;
  *) echo "usage: $0 wholebody|brain [WORKDIR]" >&2; exit 2 ;;
esac
