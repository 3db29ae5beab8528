"""bodyage desktop viewer (PySide6 + pyqtgraph + VTK). Imports bodyage_core, never the reverse."""

from bodyage_gui import _pyside_fixes  # noqa: F401  (must run before any signal is emitted)
