"""User-facing strings of the viewer, in one place."""

from __future__ import annotations

APP_NAME = "bodyage viewer"
ORG_NAME = "bodyage"

NO_IMAGE = "Open an image (File > Open) or a workspace"
VTK_UNAVAILABLE = ("3D view unavailable here: {reason}.\n"
                   "The 2D views work; run under a display (or xvfb-run) for the 3D view.")
VTK_DOWNSAMPLED = ("3D view downsampled (every {factor} voxels along x, y, z: {shape}); the 2D "
                   "views are full resolution")
OPEN_FILTER = ("Images (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.zip);;"
               "NIfTI (*.nii *.nii.gz);;All files (*)")
SESSION_FILTER = "bodyage session (*.json)"
PNG_FILTER = "PNG image (*.png)"
ERROR_TITLE = "bodyage"

SUBJECT_COLUMNS = ("subject", "sex", "BMI", "age", "pred.", "\u03c3", "gap")
#: the full meaning of each subject column (header tooltips)
SUBJECT_COLUMN_TIPS = ("subject id", "sex (F / M)", "BMI group (healthy / overweight / obese)",
                       "chronological age (years)",
                       "predicted age of the latest run (bias-corrected when available, years)",
                       "predicted standard deviation sigma (years)",
                       "age gap: predicted - chronological (years)")

ABOUT = ("bodyage viewer — linked axial / coronal / sagittal and 3D views.\n"
         "World coordinates are RAS millimetres; voxel indices are 0-based.")
