#!/usr/bin/env bash
# The recorded command behind resources/atlases/wholebody-synthetic/{F,M}: one atlas per sex from
# 40 synthetic subjects (seed 30, not the demo's or the shipped model's cohorts) at the model's
# input resolution (8.928 x 8.928 x 12 mm), so that registering a subject to it takes seconds.
# ~5 min on 2 cores. Usage: scripts/make_shipped_atlas.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/bodyage
WORK=${1:-bench/_work}/atlas_ws
$B synth "$WORK" --n 40 --seed 30 --grid 8.928,8.928,12
$B atlas build "$WORK" --groups sex --iterations 2
.venv/bin/python -c "
from bodyage_core.atlas.shipped import export_atlas
from bodyage_core.cohort import Workspace
with Workspace.open('$WORK') as ws:
    print(export_atlas(ws, 'wholebody-synthetic'))"
