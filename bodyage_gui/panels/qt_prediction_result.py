"""The age panel's result: predicted age with what its ± means, the 95 % interval, the gap, the
members and the QC flags, for one subject: computed now or stored in ``cohort.sqlite``.

:class:`ShownPrediction` is what is shown (from a
:class:`~bodyage_gui.workers.prediction.PredictionResult` or a stored prediction row);
:class:`QtPredictionResult` shows it or nothing (``clear``), never a previous subject's numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from bodyage_core.models.ensemble import interval_z

_Qt = QtCore.Qt

#: ``(key, label)`` of the rows of the form, in order
ROWS = (("subject", "Subject"), ("run", "Model"), ("raw", "Predicted (raw)"),
        ("corrected", "Bias-corrected"), ("interval", "95 % interval"),
        ("age", "Chronological"), ("gap", "Age gap"), ("members", "Members"), ("qc", "QC"))
SIGMA_TIP = ("± is one standard deviation (sigma) of the predicted age: the ensemble's "
             "calibrated predictive uncertainty; the 95 % interval is the bias-corrected age "
             "± z sigma, z the model's own split-conformal multiplier where it has one "
             "(fitted on its held-out predictions), else the Gaussian 1.96")
_SEVERITY_COLOUR = {"refuse": "#c00000", "warning": "#b05a00", "info": "#555555"}


def gap_verdict(p: ShownPrediction) -> str:
    """Whether the age gap is more than the prediction's own uncertainty explains: the
    chronological age outside the 95 % interval (accelerated / decelerated beyond it) or
    inside (not significant), with the gap in sigmas."""
    if p.gap is None or not (p.sigma > 0):
        return ""
    z = p.gap / p.sigma
    if abs(z) >= p.z95:
        return f"<b>beyond the 95 % interval</b> ({z:+.1f} sigma; 1 in 40 by chance)"
    return f"within the 95 % interval: not significant ({z:+.1f} sigma)"


@dataclass
class ShownPrediction:
    """One subject's prediction as the panel shows it (ages in years)."""

    subject_id: str
    model: str
    mean: float
    sigma: float
    corrected: float
    age: float | None = None
    member_mu: list[float] = field(default_factory=list)
    member_sigma: list[float] = field(default_factory=list)
    fold: int | None = None
    qc: list[dict[str, str]] = field(default_factory=list)
    #: ``'computed'`` (now, in this window) or ``'stored'`` (read from cohort.sqlite)
    source: str = "computed"
    #: the model's multipliers of sigma per coverage (None: Gaussian)
    interval_z: dict[str, float] | None = None

    @property
    def z95(self) -> float:
        """The multiplier of sigma of the 95 % interval."""
        return interval_z(0.95, self.interval_z)

    @property
    def gap(self) -> float | None:
        return None if self.age is None else self.corrected - self.age

    @property
    def raw_gap(self) -> float | None:
        return None if self.age is None else self.mean - self.age

    @property
    def interval95(self) -> tuple[float, float]:
        return (self.corrected - self.z95 * self.sigma, self.corrected + self.z95 * self.sigma)

    @classmethod
    def from_result(cls, r: Any, model: str | None = None) -> ShownPrediction:
        return cls(r.subject_id, model or r.run, float(r.mean), float(r.sigma),
                   float(r.corrected), r.age, list(r.member_mu), list(r.member_sigma), r.fold,
                   list(r.qc or []), "computed", getattr(r, "interval_z", None))

    @classmethod
    def from_row(cls, row: dict[str, Any], model: str) -> ShownPrediction | None:
        """A stored prediction row (``CohortDB.predictions``); None without a mean."""
        if row.get("mean") is None:
            return None
        members = row.get("members") or []
        corrected = row.get("corrected")
        return cls(str(row["subject_id"]), model, float(row["mean"]),
                   float(row.get("sigma") or 0.0),
                   float(corrected if corrected is not None else row["mean"]), row.get("age"),
                   [float(m.get("mu")) for m in members if m.get("mu") is not None],
                   [float(m.get("sigma") or 0.0) for m in members if m.get("mu") is not None],
                   row.get("fold"), list(row.get("qc") or []), "stored",
                   row.get("interval_z"))


def qc_text(flags: list[dict[str, str]]) -> str:
    """The QC flags as rich text, one line each, coloured by severity."""
    if not flags:
        return "no flags"
    lines = []
    for f in flags:
        sev = f.get("severity", "warning")
        colour = _SEVERITY_COLOUR.get(sev, "#b05a00")
        msg = str(f.get("message", "")).replace("&", "&amp;").replace("<", "&lt;")
        lines.append(f"<span style='color:{colour}'>{sev}: {msg}</span>")
    return "<br>\n".join(lines)


class QtPredictionResult(QtWidgets.QWidget):
    """The form and the member plot (see the module docstring)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.shown: ShownPrediction | None = None
        self.values: dict[str, QtWidgets.QLabel] = {}
        form = QtWidgets.QFormLayout()
        form.setLabelAlignment(_Qt.AlignmentFlag.AlignRight)
        for key, label in ROWS:
            lab = QtWidgets.QLabel("–")
            lab.setTextInteractionFlags(_Qt.TextInteractionFlag.TextSelectableByMouse)
            lab.setWordWrap(key in ("members", "qc", "run", "gap", "interval"))
            self.values[key] = lab
            form.addRow(label, lab)
        self.values["corrected"].setStyleSheet("font-weight: bold;")
        for key in ("raw", "corrected", "interval"):
            self.values[key].setToolTip(SIGMA_TIP)
        for key in ("qc", "gap"):
            self.values[key].setTextFormat(_Qt.TextFormat.RichText)
        self.note = QtWidgets.QLabel("")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #666;")

        self.member_plot = pg.PlotWidget()
        self.member_plot.setBackground("w")
        self.member_plot.setMinimumHeight(130)
        self.member_plot.setMaximumHeight(180)
        self.member_plot.setMouseEnabled(False, False)
        self.member_plot.hideButtons()
        pi = self.member_plot.getPlotItem()
        pi.setLabel("bottom", "member")
        pi.setLabel("left", "age (y)")
        pi.setTitle("ensemble members: mu ± sigma (1 SD)", size="8pt")
        self.member_plot.setToolTip("each member's predicted age mu ± sigma (1 SD); solid "
                                    "line: the ensemble mean; dashed line: chronological age")
        self.member_plot.setVisible(False)   # no empty axes before there is a prediction
        self.member_points = pg.ScatterPlotItem(size=8, brush=pg.mkBrush(40, 90, 200),
                                                pen=pg.mkPen("k"))
        self.member_errors = pg.ErrorBarItem(pen=pg.mkPen(40, 90, 200), beam=0.2)
        self.mean_line = pg.InfiniteLine(angle=0, pen=pg.mkPen((40, 90, 200), width=1))
        self.age_line = pg.InfiniteLine(angle=0, pen=pg.mkPen((0, 0, 0), width=1,
                                                              style=_Qt.PenStyle.DashLine))
        for item in (self.member_errors, self.member_points, self.mean_line, self.age_line):
            pi.addItem(item)
        self.mean_line.hide()
        self.age_line.hide()
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.note)
        lay.addLayout(form)
        lay.addWidget(self.member_plot)

    def values_text(self) -> dict[str, str]:
        """What each row shows, as plain text."""
        return {k: re.sub(r"<[^>]+>", "", lab.text().replace("<br>", "\n"))
                for k, lab in self.values.items()}

    def clear(self, note: str = "") -> None:
        """Show nothing (and why, in ``note``)."""
        self.shown = None
        for lab in self.values.values():
            lab.setText("–")
        self.note.setText(note)
        self.member_plot.setVisible(False)

    def show_prediction(self, p: ShownPrediction, note: str = "") -> None:
        self.shown = p
        self.note.setText(note)
        v = self.values
        v["subject"].setText(p.subject_id)
        where = {"stored": "stored in cohort.sqlite", "computed": "computed now"}[p.source]
        fold = f", fold {p.fold + 1}, out of fold" if p.fold is not None else ""
        v["run"].setText(f"{p.model}  ({where}{fold})")
        v["raw"].setText(f"{p.mean:.1f} ± {p.sigma:.1f} y (1 SD)")
        v["corrected"].setText(f"{p.corrected:.1f} ± {p.sigma:.1f} y (1 SD)")
        lo, hi = p.interval95
        how = (f"split-conformal, ± {p.z95:.2f} sigma" if p.interval_z else
               "Gaussian, ± 1.96 sigma")
        v["interval"].setText(f"{lo:.1f} – {hi:.1f} y  ({how})")
        v["age"].setText("–" if p.age is None else f"{p.age:.1f} y")
        if p.gap is None:
            v["gap"].setText("– (no chronological age)")
        else:
            v["gap"].setText(f"{p.gap:+.1f} y corrected  ({p.raw_gap:+.1f} y raw)<br>"
                             + gap_verdict(p))
        mu = np.asarray(p.member_mu, float)
        spread = f"  (sd {float(np.std(mu)):.1f} y)" if len(mu) > 1 else ""
        v["members"].setText(f"{len(mu)}: " + ", ".join(f"{m:.1f}" for m in mu) + spread)
        v["qc"].setText(qc_text(p.qc))
        self._plot(p)

    def _plot(self, p: ShownPrediction) -> None:
        if not p.member_mu:
            self.member_plot.setVisible(False)
            return
        x = np.arange(1, len(p.member_mu) + 1, dtype=float)
        mu = np.asarray(p.member_mu, float)
        sd = np.nan_to_num(np.asarray(p.member_sigma, float))
        self.member_points.setData(x=x, y=mu)
        self.member_plot.setVisible(True)
        self.member_errors.setData(x=x, y=mu, height=2 * sd)
        self.mean_line.setValue(p.mean)
        self.mean_line.show()
        if p.age is not None:
            self.age_line.setValue(p.age)
            self.age_line.show()
        else:
            self.age_line.hide()
        ys = [*mu - sd, *mu + sd, p.mean] + ([p.age] if p.age is not None else [])
        lo, hi = float(np.nanmin(ys)), float(np.nanmax(ys))
        pad = max(1.0, 0.15 * (hi - lo))
        self.member_plot.setXRange(0.5, len(mu) + 0.5, padding=0)
        step = max(1, len(mu) // 10)
        self.member_plot.getPlotItem().getAxis("bottom").setTicks(
            [[(float(i), str(i)) for i in range(1, len(mu) + 1, step)]])
        self.member_plot.setYRange(lo - pad, hi + pad, padding=0)
