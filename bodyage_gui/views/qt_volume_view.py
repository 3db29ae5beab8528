"""The 3D view: the body surface (flying edges on the body mask of the base image) with the
importance map volume-rendered inside it, and the cursor, linked to the 2D views.

Optional: where VTK cannot open an OpenGL window (offscreen Qt, no display) the view is a
placeholder with a message and everything else works. Only this view is downsampled for large
volumes (to at most :data:`MAX_3D_VOXELS_PER_AXIS` per axis), and it says so.
"""

from __future__ import annotations

import math

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from bodyage_core import display
from bodyage_core.viewer import Layer, ViewerState, sample_nearest
from bodyage_gui import strings
from bodyage_gui.redraw import RedrawScheduler
from bodyage_gui.views import qt_vtk_binding
from bodyage_gui.views.qt_colorbar import importance_layer

MAX_3D_VOXELS_PER_AXIS = 128


def downsample_factor(shape: tuple[int, ...], limit: int = MAX_3D_VOXELS_PER_AXIS) -> int:
    """The largest per-axis step of :func:`downsample_factors`."""
    return max(downsample_factors(shape, limit))


def downsample_factors(shape: tuple[int, ...], limit: int = MAX_3D_VOXELS_PER_AXIS
                       ) -> tuple[int, ...]:
    """Step per axis (numpy order) that keeps each axis at most ``limit`` voxels: only the
    axes that exceed it are thinned (a 512 x 512 x 20 CT slab keeps its 20 slices; one step
    for all axes made them 5)."""
    return tuple(max(1, int(math.ceil(n / limit))) for n in shape)


def body_mask_level(data: np.ndarray) -> float:
    """An intensity above which a voxel is body (not air), from robust percentiles."""
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return 0.0
    lo, hi = np.percentile(finite[:: max(1, finite.size // 200_000)], [2, 98])
    return float(lo + 0.15 * (hi - lo))




class QtVolumeView(QtWidgets.QWidget):
    """3D view following ``state``; ``available`` is False (placeholder) where VTK cannot run."""

    def __init__(self, state: ViewerState, scheduler: RedrawScheduler | None = None,
                 parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.scheduler = scheduler or RedrawScheduler(parent=self)
        self.reason = qt_vtk_binding.vtk_unavailable_reason()
        self.available = self.reason is None
        self.note = ""
        self.factor = 1
        self.factors = (1, 1, 1)
        self._dirty: set[str] = {"surface", "volume", "cursor"}
        self._importance: Layer | None = None
        self._base_id: int | None = None
        self.n_transfer_updates = 0
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        self.note_label = QtWidgets.QLabel("")
        # one line, never wrapped: a word-wrapped label gives the view a height-for-width
        # that made its row of the grid taller than the other (rows unequal at 1280 x 720)
        self.note_label.setWordWrap(False)
        self.note_label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                                      QtWidgets.QSizePolicy.Policy.Fixed)
        self.note_label.setStyleSheet("color: #cccccc; background: black; font-size: 11px;")
        if not self.available:
            self.placeholder = QtWidgets.QLabel(strings.VTK_UNAVAILABLE.format(reason=self.reason))
            self.placeholder.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
            self.placeholder.setWordWrap(True)
            self.placeholder.setStyleSheet("color: #aaaaaa; background: black;")
            lay.addWidget(self.placeholder)
            return
        self._build_vtk(lay)
        lay.addWidget(self.note_label)
        ev = state.events
        self._subs = ((ev.layers_changed, self._on_scene), (ev.layer_changed, self._on_layer),
                      (ev.active_layer_changed, self._on_active),
                      (ev.cursor_changed, self._on_cursor))
        for e, fn in self._subs:
            e.connect(fn)
        self.scheduler.request(self)

    # -- VTK setup -----------------------------------------------------------------------------------
    def _build_vtk(self, lay: QtWidgets.QVBoxLayout) -> None:
        from vtkmodules.vtkFiltersSources import vtkLineSource, vtkSphereSource
        from vtkmodules.vtkInteractionStyle import vtkInteractorStyleTrackballCamera
        from vtkmodules.vtkRenderingCore import (
            vtkActor,
            vtkPolyDataMapper,
            vtkRenderer,
        )

        qvtk = qt_vtk_binding.load()
        self.vtk_widget = qvtk(self)
        lay.addWidget(self.vtk_widget, 1)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(0.0, 0.0, 0.0)
        self.renderer.SetBackground2(0.12, 0.12, 0.18)
        self.renderer.GradientBackgroundOn()
        rw = self.vtk_widget.GetRenderWindow()
        rw.AddRenderer(self.renderer)
        self.interactor = rw.GetInteractor()
        self.interactor.SetInteractorStyle(vtkInteractorStyleTrackballCamera())
        self.interactor.AddObserver("LeftButtonPressEvent", self._on_vtk_click, 1.0)
        #: the user turned or zoomed the camera (a resize then keeps it; else it refits)
        self.user_camera = False
        self.interactor.AddObserver("StartInteractionEvent", self._on_interaction)
        self.surface_actor = None
        self.volume_actor = None
        self.sphere = vtkSphereSource()
        self.sphere.SetThetaResolution(16)
        self.sphere.SetPhiResolution(16)
        m = vtkPolyDataMapper()
        m.SetInputConnection(self.sphere.GetOutputPort())
        self.cursor_actor = vtkActor()
        self.cursor_actor.SetMapper(m)
        self.cursor_actor.GetProperty().SetColor(0.0, 0.86, 0.35)
        self.cursor_actor.VisibilityOff()   # no image, no cursor (it filled the empty view)
        self.renderer.AddActor(self.cursor_actor)
        self.cursor_lines = []
        self.cursor_line_actors = []
        for _ in range(3):
            src = vtkLineSource()
            mm = vtkPolyDataMapper()
            mm.SetInputConnection(src.GetOutputPort())
            a = vtkActor()
            a.SetMapper(mm)
            a.GetProperty().SetColor(0.0, 0.86, 0.35)
            a.GetProperty().SetLineWidth(1.5)
            a.VisibilityOff()
            self.renderer.AddActor(a)
            self.cursor_lines.append(src)
            self.cursor_line_actors.append(a)
        self._bounds = None
        self.orientation_marker = self._orientation_marker()

    def _orientation_marker(self):
        """A small R/L A/P S/I cube in the lower-left corner that turns with the camera (as
        in 3D Slicer), so the 3D view says which side is which. None where it cannot be
        made."""
        try:
            from vtkmodules.vtkInteractionWidgets import vtkOrientationMarkerWidget
            from vtkmodules.vtkRenderingAnnotation import vtkAnnotatedCubeActor
        except ImportError:
            return None
        cube = vtkAnnotatedCubeActor()
        # world coordinates are RAS millimetres: +x right, +y anterior, +z superior
        for face, label in (("XPlus", "R"), ("XMinus", "L"), ("YPlus", "A"),
                            ("YMinus", "P"), ("ZPlus", "S"), ("ZMinus", "I")):
            getattr(cube, f"Set{face}FaceText")(label)
        cube.SetFaceTextScale(0.6)
        cube.GetCubeProperty().SetColor(0.25, 0.25, 0.3)
        cube.GetTextEdgesProperty().SetColor(0.6, 0.6, 0.6)
        for prop in (cube.GetXPlusFaceProperty(), cube.GetXMinusFaceProperty()):
            prop.SetColor(1.0, 0.82, 0.3)
        for prop in (cube.GetYPlusFaceProperty(), cube.GetYMinusFaceProperty()):
            prop.SetColor(0.5, 0.9, 0.5)
        for prop in (cube.GetZPlusFaceProperty(), cube.GetZMinusFaceProperty()):
            prop.SetColor(0.55, 0.75, 1.0)
        marker = vtkOrientationMarkerWidget()
        marker.SetOrientationMarker(cube)
        marker.SetInteractor(self.interactor)
        marker.SetViewport(0.0, 0.0, 0.22, 0.22)
        marker.SetEnabled(1)
        marker.InteractiveOff()
        self._marker_cube = cube
        return marker

    def _disconnect(self, *_):
        for e, fn in getattr(self, "_subs", ()):
            e.disconnect(fn)

    def disconnect_state(self) -> None:
        self._disconnect()

    def close_vtk(self) -> None:
        """Release the render window (call before the widget is destroyed)."""
        if self.available:
            self._disconnect()
            if getattr(self, "orientation_marker", None) is not None:
                self.orientation_marker.SetEnabled(0)
                self.orientation_marker = None
            self.vtk_widget.Finalize()

    # -- state -> view ---------------------------------------------------------------------------
    def _on_scene(self, *_):
        self._mark("surface", "volume")

    def _on_active(self, *_):
        if importance_layer(self.state) is not self._importance:
            self._mark("volume")

    def _on_layer(self, layer: Layer, keys: set[str]):
        if layer is self._importance:
            if keys <= {"vmin", "vmax", "threshold", "opacity", "colormap", "name"}:
                self._mark("transfer")  # cheap: only the transfer functions change
            else:
                self._mark("volume")
        elif layer.kind == "overlay" and "visible" in keys:
            self._mark("volume")

    def _on_cursor(self, *_):
        self._mark("cursor")

    def _mark(self, *what: str) -> None:
        self._dirty.update(what)
        self.scheduler.request(self)

    def flush(self) -> None:
        if not self.available:
            return
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return
        if "surface" in dirty:
            self._build_surface()
            dirty |= {"volume", "cursor"}
        if "volume" in dirty:
            self._build_volume()
            dirty.add("transfer")
        if "transfer" in dirty:
            self._update_transfer()
        if "cursor" in dirty:
            self._update_cursor()
        self.vtk_widget.GetRenderWindow().Render()

    def _build_surface(self) -> None:
        """Body surface (flying edges on the smoothed body mask) and the 3D grid/downsampling."""
        from scipy.ndimage import binary_fill_holes, gaussian_filter
        from vtkmodules.vtkFiltersCore import (
            vtkFlyingEdges3D,
            vtkPolyDataNormals,
            vtkWindowedSincPolyDataFilter,
        )
        from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper

        if self.surface_actor is not None:
            self.renderer.RemoveActor(self.surface_actor)
            self.surface_actor = None
        base = self.state.base_layer
        self._base_id = None if base is None else base.id
        if base is None:
            self.note_label.setText("")
            self._bounds = None
            return
        vol = base.volume
        fz, fy, fx = self.factors = downsample_factors(vol.shape)
        f = self.factor = max(self.factors)
        # body mask from all channels (water + fat: subcutaneous fat is dark in water alone)
        small = np.ascontiguousarray(vol.data[:, ::fz, ::fy, ::fx].sum(axis=0,
                                                                         dtype=np.float32))
        affine = vol.affine.copy()
        affine[:3, :3] = affine[:3, :3] * np.array([fx, fy, fz], float)   # columns: x, y, z
        self._small_affine = affine
        steps = " x ".join(str(v) for v in (fx, fy, fz))
        self.note = strings.VTK_DOWNSAMPLED.format(
            factor=steps, shape="x".join(str(n) for n in small.shape[::-1])) if f > 1 else ""
        self.note_label.setText(self.note)
        self.note_label.setToolTip(self.note)
        body = small > body_mask_level(small)
        for k in range(body.shape[0]):  # lungs and bowel gas are inside the body: fill them
            body[k] = binary_fill_holes(body[k])
        mask = gaussian_filter(body.astype(np.float32), 1.0)
        fe = vtkFlyingEdges3D()
        fe.SetInputData(_image_data(mask, affine))
        fe.SetValue(0, 0.5)
        smooth = vtkWindowedSincPolyDataFilter()
        smooth.SetInputConnection(fe.GetOutputPort())
        smooth.SetNumberOfIterations(12)
        smooth.SetPassBand(0.1)
        normals = vtkPolyDataNormals()
        normals.SetInputConnection(smooth.GetOutputPort())
        mapper = vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtkActor()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetColor(0.93, 0.80, 0.70)
        prop.SetSpecular(0.2)
        self.renderer.AddActor(actor)
        self.surface_actor = actor
        lo = vol.voxel_to_world((0, 0, 0))
        hi = vol.voxel_to_world(np.array(vol.shape) - 1)
        self._bounds = (np.minimum(lo, hi), np.maximum(lo, hi))
        self.sphere.SetRadius(max(2.0, float(np.max(self._bounds[1] - self._bounds[0])) / 80))
        self.user_camera = False
        self._reset_camera()

    def _build_volume(self) -> None:
        """Volume rendering of the importance map, sampled on the (downsampled) base grid."""
        from vtkmodules.vtkRenderingCore import vtkVolume, vtkVolumeProperty
        from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkSmartVolumeMapper

        if self.volume_actor is not None:
            self.renderer.RemoveVolume(self.volume_actor)
            self.volume_actor = None
        imp = importance_layer(self.state)
        self._importance = imp
        base = self.state.base_layer
        if self.surface_actor is not None:
            self.surface_actor.GetProperty().SetOpacity(0.22 if imp is not None else 0.9)
        if imp is None or base is None:
            return
        vol = base.volume
        if imp.resampled or self.factor > 1:
            zz, yy, xx = np.meshgrid(*[np.arange(0, n, f) for n, f in
                                       zip(vol.shape, self.factors)], indexing="ij")
            world = vol.voxel_to_world(np.stack([zz, yy, xx], axis=-1).astype(float))
            values = sample_nearest(imp.volume, imp.channel, world)
        else:
            values = imp.data.astype(np.float32)
        values = np.ascontiguousarray(np.nan_to_num(values, nan=0.0), dtype=np.float32)
        vmapper = vtkSmartVolumeMapper()
        vmapper.SetInputData(_image_data(values, self._small_affine))
        self._volume_property = vtkVolumeProperty()
        self._volume_property.SetInterpolationTypeToLinear()
        self._volume_property.ShadeOff()
        vactor = vtkVolume()
        vactor.SetMapper(vmapper)
        vactor.SetProperty(self._volume_property)
        self.renderer.AddVolume(vactor)
        self.volume_actor = vactor

    def _update_transfer(self) -> None:
        """Colour and opacity transfer functions from the layer's colour map, range, threshold."""
        from vtkmodules.vtkRenderingCore import vtkColorTransferFunction

        imp = self._importance
        if imp is None or self.volume_actor is None:
            return
        ctf = vtkColorTransferFunction()
        table = display.lut(imp.colormap)
        for i in range(0, 256, 8):
            v = imp.vmin + (imp.vmax - imp.vmin) * i / 255.0
            ctf.AddRGBPoint(v, *(table[i, :3] / 255.0))
        self._volume_property.SetColor(ctf)
        self._volume_property.SetScalarOpacity(_opacity_function(imp))
        self.n_transfer_updates += 1

    def _reset_camera(self) -> None:
        """Look at the subject's front (from anterior, a little from the right and above),
        head up, at a distance where the whole box of the volume is in view: every corner
        inside the view angle with a margin (a thin slab sat half outside when the bounding
        sphere was zoomed into)."""
        cam = self.renderer.GetActiveCamera()
        lo, hi = self._bounds
        c = (lo + hi) / 2
        ext = np.maximum(hi - lo, 1e-6)
        direction = np.array([-0.35, 1.0, 0.15])
        direction /= np.linalg.norm(direction)
        cam.SetFocalPoint(*c)
        cam.SetViewUp(0, 0, 1)
        cam.SetPosition(*(c + direction * float(np.max(ext)) * 3))
        cam.OrthogonalizeViewUp()
        w, h = self.vtk_widget.GetRenderWindow().GetSize()
        aspect = w / h if w > 0 and h > 0 else 1.0
        half_v = math.radians(cam.GetViewAngle()) / 2
        half_h = math.atan(math.tan(half_v) * aspect)
        up = np.array(cam.GetViewUp())
        right = np.cross(-direction, up)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for z in (lo[2], hi[2])]) - c
        margin = 1.08
        dist = 0.0
        for p in corners:
            depth = float(p @ direction)          # towards the camera
            dist = max(dist, depth + margin * abs(float(p @ up)) / math.tan(half_v),
                       depth + margin * abs(float(p @ right)) / math.tan(half_h))
        cam.SetPosition(*(c + direction * dist))
        self.renderer.ResetCameraClippingRange()

    def _on_interaction(self, *_):
        self.user_camera = True

    def resizeEvent(self, ev):  # noqa: N802
        super().resizeEvent(ev)
        if self.available and self._bounds is not None and not self.user_camera:
            QtCore.QTimer.singleShot(0, self._refit)

    def _refit(self) -> None:
        if self._bounds is not None and not self.user_camera:
            self._reset_camera()
            self.vtk_widget.GetRenderWindow().Render()

    def corners_in_view(self) -> bool:
        """Every corner of the volume's box projects inside the render window (tests)."""
        if self._bounds is None:
            return True
        lo, hi = self._bounds
        w, h = self.vtk_widget.GetRenderWindow().GetSize()
        ren = self.renderer
        for x in (lo[0], hi[0]):
            for y in (lo[1], hi[1]):
                for z in (lo[2], hi[2]):
                    ren.SetWorldPoint(x, y, z, 1.0)
                    ren.WorldToDisplay()
                    dx, dy, _ = ren.GetDisplayPoint()
                    if not (0 <= dx <= w and 0 <= dy <= h):
                        return False
        return True

    def _update_cursor(self) -> None:
        shown = self._bounds is not None
        for a in [self.cursor_actor, *self.cursor_line_actors]:
            a.SetVisibility(shown)
        if not shown:
            return
        c = self.state.cursor
        self.sphere.SetCenter(*c)
        lo, hi = self._bounds
        for axis, src in enumerate(self.cursor_lines):
            p1, p2 = c.copy(), c.copy()
            p1[axis], p2[axis] = lo[axis], hi[axis]
            src.SetPoint1(*p1)
            src.SetPoint2(*p2)

    def _on_vtk_click(self, obj, event):
        """Ctrl+left click on the surface moves the cursor there."""
        if not self.interactor.GetControlKey() or self.surface_actor is None:
            return
        from vtkmodules.vtkRenderingCore import vtkCellPicker

        x, y = self.interactor.GetEventPosition()
        picker = vtkCellPicker()
        picker.SetTolerance(0.005)
        if picker.Pick(x, y, 0, self.renderer):
            self.state.set_cursor(picker.GetPickPosition())

    # -- screenshots -------------------------------------------------------------------------------
    def render_image(self) -> QtGui.QImage | None:
        """The current 3D rendering as a QImage (None when VTK is unavailable)."""
        if not self.available:
            return None
        from vtkmodules.util.numpy_support import vtk_to_numpy
        from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

        self.flush()
        rw = self.vtk_widget.GetRenderWindow()
        rw.Render()
        w2i = vtkWindowToImageFilter()
        w2i.SetInput(rw)
        w2i.SetInputBufferTypeToRGB()
        w2i.ReadFrontBufferOff()
        w2i.Update()
        img = w2i.GetOutput()
        w, h, _ = img.GetDimensions()
        arr = vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[::-1]
        arr = np.ascontiguousarray(arr[..., :3])
        return QtGui.QImage(arr.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()


def _image_data(array_zyx: np.ndarray, affine: np.ndarray):
    """A vtkImageData (x fastest) with origin, spacing and direction from the affine."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData

    nz, ny, nx = array_zyx.shape
    img = vtkImageData()
    img.SetDimensions(nx, ny, nz)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    img.SetSpacing(*spacing)
    img.SetOrigin(*affine[:3, 3])
    direction = affine[:3, :3] / spacing
    img.SetDirectionMatrix(*direction.ravel())
    scalars = numpy_to_vtk(array_zyx.ravel(order="C"), deep=True)
    img.GetPointData().SetScalars(scalars)
    return img


def _opacity_function(layer: Layer):
    from vtkmodules.vtkCommonDataModel import vtkPiecewiseFunction

    otf = vtkPiecewiseFunction()
    top = 0.5 * layer.opacity
    vmin, vmax = layer.vmin, layer.vmax
    if display.is_diverging(layer.colormap):
        m = max(abs(vmin), abs(vmax)) or 1.0
        t = layer.threshold if layer.threshold is not None else 0.1 * m
        otf.AddPoint(-m, top)
        otf.AddPoint(-t, 0.05 * top)
        otf.AddPoint(-t + 1e-6 * m, 0.0)
        otf.AddPoint(t - 1e-6 * m, 0.0)
        otf.AddPoint(t, 0.05 * top)
        otf.AddPoint(m, top)
        return otf
    t = layer.threshold if layer.threshold is not None else vmin + 0.1 * (vmax - vmin)
    eps = 1e-6 * max(abs(vmax - vmin), 1e-6)
    otf.AddPoint(min(vmin, t) - 1.0, 0.0)
    otf.AddPoint(t - eps, 0.0)
    otf.AddPoint(t, 0.03 * top)
    otf.AddPoint(max(vmax, t + eps), top)
    return otf
