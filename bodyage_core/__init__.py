"""bodyage core: Qt-free library for whole-body MRI age prediction.

Everything here runs without a display: loaders, preprocessing, the cohort index, the synthetic
phantom, models, training, explanation, registration and atlases. ``bodyage_gui`` builds on it;
nothing here imports Qt, pyqtgraph or VTK (a test enforces it).
"""

from bodyage_core.errors import BodyageError
from bodyage_core.volume import Volume

__all__ = ["BodyageError", "Volume", "__version__"]
__version__ = "0.1.0"
