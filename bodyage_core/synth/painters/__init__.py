"""The phantom's anatomy: painters per organ group on a shared :class:`~.body.Body`.

Each painter is a plain function ``paint(body)`` that paints into ``body.cv.labels`` (what it
may overwrite is in its ``only`` tuples, so the order matters) and records in
``body.painted`` what the images and the age-effect mask need. :data:`PAINTERS` is the order
the phantom calls them in; only :func:`~.trunk.paint_cavities` draws from the noise stream (the
visceral fat texture), before the images do.
"""

from bodyage_core.synth.painters.body import Body, Painted
from bodyage_core.synth.painters.limbs import paint_arms, paint_legs, record_thigh_compartments
from bodyage_core.synth.painters.organs import paint_abdominal_organs, paint_thorax
from bodyage_core.synth.painters.skeleton import paint_back, paint_knees, paint_pelvis_and_femurs
from bodyage_core.synth.painters.trunk import paint_cavities, paint_trunk_wall

#: The painters in the order they paint (each may only overwrite what those before left).
PAINTERS = (
    paint_legs,
    paint_trunk_wall,
    paint_arms,
    paint_cavities,
    paint_abdominal_organs,
    paint_thorax,
    paint_pelvis_and_femurs,
    paint_knees,
    paint_back,
    record_thigh_compartments,
)

__all__ = ["PAINTERS", "Body", "Painted"]
