"""The one place that chooses VTK's Qt binding (PySide6) and says whether VTK can run here.

Everything else imports ``QVTKRenderWindowInteractor`` from this module, never from
``vtkmodules.qt`` directly.
"""

from __future__ import annotations

import os

_REASON: str | None = None


def vtk_unavailable_reason() -> str | None:
    """None when a VTK render window can be created here, else a short reason."""
    global _REASON
    if os.environ.get("BODYAGE_NO_VTK"):
        return "disabled by BODYAGE_NO_VTK"
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform in ("offscreen", "minimal"):
        return f"Qt platform '{platform}' has no OpenGL windows"
    if os.name == "posix" and not os.environ.get("DISPLAY") and not os.environ.get(
            "WAYLAND_DISPLAY") and platform != "cocoa":
        import sys
        if sys.platform.startswith("linux"):
            return "no display (DISPLAY is not set)"
    if _REASON is not None:
        return _REASON or None
    try:
        load()
        from vtkmodules.vtkRenderingCore import vtkRenderWindow

        probe = vtkRenderWindow()
        probe.SetOffScreenRendering(1)
        ok = bool(probe.SupportsOpenGL())
        probe.Finalize()
    except Exception as exc:  # pragma: no cover - depends on the machine
        _REASON = f"VTK could not be imported ({exc.__class__.__name__}: {exc})"
        return _REASON
    _REASON = "" if ok else "no usable OpenGL for VTK on this display"
    return _REASON or None


def load():
    """Import and return ``(vtk_module_namespace, QVTKRenderWindowInteractor)``."""
    import vtkmodules.qt

    vtkmodules.qt.PyQtImpl = "PySide6"
    import vtkmodules.vtkInteractionStyle  # noqa: F401  (registers interactor styles)
    import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text)
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL backend)
    import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401
    from vtkmodules.qt.QVTKRenderWindowInteractor import QVTKRenderWindowInteractor

    return QVTKRenderWindowInteractor
