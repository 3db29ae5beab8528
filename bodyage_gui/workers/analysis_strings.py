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
RUN_FOLDER_FILTER = "run folder (models/<run>/ with config.json) or model folder (model.json)"
NO_WORKSPACE = "open a workspace (File > Open workspace) to see the cohort"
NO_PREDICTIONS = ("run {run!r} has no stored predictions — run `bodyage predict WORKSPACE "
                  "--run {run}`")
NO_ATLAS_MAPS = ("no population maps of run {run!r} (accelerated and decelerated agers, or the "
                 "age trend) in {where} — run `bodyage atlas maps WORKSPACE --run {run}` first "
                 "(and, after `bodyage explain WORKSPACE --run {run} --method gradxinput "
                 "--signed --reference atlas`, `bodyage atlas maps WORKSPACE --run {run} --kind "
                 "gradxinput_signed_vs_atlas_{run}` for the age trend of the signed maps)")
NO_REGIONS = ("no region summary for run {run!r} — run `bodyage atlas maps WORKSPACE --run "
              "{run}` first (it writes reports/regions_{run}.csv)")
GAP_MAPS_TITLE = "Accelerated vs decelerated agers — {group}, run {run}"
AGE_TREND_MAPS_TITLE = "Age trend — {group}, run {run}"
#: the maps an age trend is read from, preferred first: (file tag, what they are)
AGE_TREND_SOURCES = (("gradxinput_signed_vs_atlas_{run}",
                      "signed gradient × (input − atlas template)"),
                     ("gradxinput_signed_{run}", "signed gradient × input"),
                     ("{run}", "Grad-CAM"))
AGE_TREND_VIEW = "age trend (n={n}, {p})\nof the {source} maps"
AGE_TREND_P = "p < {p:g}"
AGE_TREND_P_TFCE = "FWE p < {p:g}, TFCE"
#: how the kept voxels were chosen, by the age trend's ``correction``
AGE_TREND_KEPT = {"none": "the voxel-wise {p} (uncorrected)",
                  "tfce": "the family-wise {p} (threshold-free cluster enhancement, "
                          "permuted ages)"}
AGE_TREND_UNTHRESHOLDED = "unthresholded"
AGE_TREND_INFO = ("Age trend of the group's {source} maps ({file}): voxel-wise covariance with "
                  "chronological age per SD of age over n={n} subjects, kept where {kept}, "
                  "else 0; diverging, centred on 0 (red: "
                  "evidence that grows with age, blue: that falls with age).")
AGE_TREND_EMPTY = " No voxel passes {p}: the view shows the template only."
AGE_TREND_IN_MASK = " {share:.0%} of it lies in the planted ageing organs."
NO_GAP_MAPS_GROUP = ("No accelerated / decelerated population maps of run {run} for group "
                     "{group} — run `bodyage atlas maps WORKSPACE --run {run}` to add them.")
LINKED_VIEWS = " Views are linked: click to move the cursor in all of them."
WIZARD_TITLE = "Train an age model"
WIZARD_NO_WORKSPACE = "choose a workspace folder (one with cohort.sqlite)"
WIZARD_RUN_EXISTS = "a run named {run!r} exists — choose another name or tick Overwrite"

AXIS_PREDICTED = {"raw": "predicted age, raw (y)",
                  "corrected": "predicted age, bias-corrected (y)"}
AXIS_CHRONOLOGICAL = "chronological age (y)"

AUTO_MODEL = "Automatic: the model that fits the scan"
AUTO_MODEL_TIP = ("the first model found by name (shipped in resources/models, "
                  "BODYAGE_MODEL_PATH, your model folder) whose channels and envelope (contrast, "
                  "body region, field of view, voxel size, ages) accept the scan on screen")
RUN_BOX_TIP = ("what predicts: Automatic (the model that fits the scan), a run of the open "
               "workspace (models/<run>/), a model found by name or a folder")
NO_PREDICTION_YET = "no prediction of {subject} with this model yet — press Predict (Ctrl+P)"
FINISHED_FOR_OTHER = (" — the viewer shows another subject now: its result is kept for it "
                      "(shown when you go back)")

#: the test of each statistic ``bodyage compare`` runs
TEST_NAMES = {"t": "Welch t, permutation FWE", "diff": "difference, permutation FWE"}
DIFF_UNTESTED = ("The difference is not tested: run `bodyage compare accelerated decelerated "
                 "WORKSPACE --run {run}` for the permutation test; read it as a description, "
                 "not as an effect.")
NOTHING_SIGNIFICANT = ("Nothing in the difference is significant: no voxel has p(FWE) <= "
                       "{alpha:g} (smallest p(FWE) {minp:.3g}). The accelerated and decelerated "
                       "agers' maps do not differ beyond chance.")
GATE_SHUT = "The comparison's gate is shut: {reason}."
GATE_LINE = "gate {state}: {outside}/{n} outside {c:g} % (chance {expected:g}), p {p}"
TREND_STATS = "voxel-wise t, uncorrected: {kept} voxels {p}, min p {minp}"
TREND_STATS_TFCE = "TFCE permutation test: {kept} voxels {p}, min p(FWE) {minp}"
TREND_NOTHING = "No voxel of the age trend passes {p}."
GAP_RULE_MAPS = "the rule the population maps of this run were built with"
GAP_RULE_OTHER = "the population maps of this run were built with another rule: {rule}"
WIZARD_PARTIAL_EXISTS = ("an interrupted run {run!r} exists — tick Resume to continue it, or "
                         "Overwrite to start again")
WIZARD_CANCELLED = ("cancelled — the partial run stays in {partial}; Resume continues it (or "
                    "`bodyage train {workspace} --run {run} --resume`)")
