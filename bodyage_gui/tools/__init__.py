"""The viewer's tools beyond moving the cursor: the ruler and box / ellipse regions with
their statistics (:mod:`.measure`), drawn on the views (:mod:`.overlay_items`), and the hover
probe (:mod:`.hover`). The measurements themselves live in the model
(:mod:`bodyage_core.viewer.measure`)."""

from bodyage_gui.tools.measure import MeasureTools

__all__ = ["MeasureTools"]
