"""User-facing strings of the analysis panels (prediction, cohort, training wizard)."""

from __future__ import annotations

PREDICTION_PANEL = "Prediction"
COHORT_PANEL = "Cohort"

NO_RUN = ("no trained run to predict with — train one (Analysis > Train model...) or choose a "
          "run folder (models/<run>/)")
NO_SUBJECT = "open a subject (or an image) before predicting"
BUSY = "a prediction is already running — wait for it or press Cancel"
SUBJECT_CHANGED = "the viewer shows another image now; the maps were not added as overlays"
CANCELLED = "prediction cancelled; nothing changed"
RUN_FOLDER_FILTER = "run folder (models/<run>/ with config.json)"
NO_WORKSPACE = "open a workspace (File > Open workspace) to see the cohort"
NO_PREDICTIONS = ("run {run!r} has no stored predictions — run `bodyage predict WORKSPACE "
                  "--run {run}`")
NO_ATLAS_MAPS = ("no population maps of run {run!r} for accelerated and decelerated agers in "
                 "{where} — run `bodyage atlas maps WORKSPACE --run {run}` first")
NO_REGIONS = ("no region summary for run {run!r} — run `bodyage atlas maps WORKSPACE --run "
              "{run}` first (it writes reports/regions_{run}.csv)")
GAP_MAPS_TITLE = "Accelerated vs decelerated agers — {group}, run {run}"
WIZARD_TITLE = "Train an age model"
WIZARD_NO_WORKSPACE = "choose a workspace folder (one with cohort.sqlite)"
WIZARD_RUN_EXISTS = "a run named {run!r} exists — choose another name or tick Overwrite"

AXIS_PREDICTED = {"raw": "predicted age, raw (y)",
                  "corrected": "predicted age, bias-corrected (y)"}
AXIS_CHRONOLOGICAL = "chronological age (y)"
