"""Workspace folders and the SQLite cohort index (subjects, images, runs, predictions)."""

from bodyage_core.cohort.database import BMI_GROUPS, CohortDB, Subject, bmi_group
from bodyage_core.cohort.schema import SCHEMA_VERSION
from bodyage_core.cohort.workspace import Workspace, safe_name

__all__ = ["BMI_GROUPS", "SCHEMA_VERSION", "CohortDB", "Subject", "Workspace", "bmi_group",
           "safe_name"]
