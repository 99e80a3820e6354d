"""The six Zero123++ views: grid layout, cameras and background matting.

Zero123++ writes its six views as one image: 3 rows x 2 columns of square tiles, read
row-major (tile k at row k // 2, column k % 2). Each tile is seen from a fixed camera whose
azimuth is relative to the input view and whose elevation is absolute.

World frame (glTF): +Y up, the input camera on +Z looking at the origin, metres. A view at
azimuth a, elevation e and distance r sits at r * (cos e sin a, sin e, cos e cos a), so
azimuth 90 is the input camera's right-hand side (+X).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

GRID_ROWS = 3
GRID_COLS = 2
NUM_VIEWS = GRID_ROWS * GRID_COLS
MAX_MATTE_THRESHOLD = 24.0  # 8-bit levels: the most a background's noise may raise matting's threshold
AZIMUTHS_DEG = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)

Version = Literal["v1.1", "v1.2"]


@dataclass(frozen=True)
class ViewSetup:
    """Where a model version puts its six cameras."""

    elevations_deg: tuple[float, ...]
    fov_deg: float
    distance: float


# v1.2 normalises objects into the unit sphere and renders them from r = 4 with a 30 degree
# field of view. v1.1 does not publish a distance; we place its camera so the unit sphere
# covers the same fraction of the frame as in v1.2 (only the ratio of size to distance is
# visible in an image, and export normalises the scale anyway).
_V12_FOV = 30.0
_V11_FOV = math.degrees(2.0 * math.atan(16.0 / 35.0))
VIEW_SETUPS: dict[str, ViewSetup] = {
    "v1.2": ViewSetup((20.0, -10.0) * 3, _V12_FOV, 4.0),
    "v1.1": ViewSetup(
        (30.0, -20.0) * 3,
        _V11_FOV,
        4.0 * math.tan(math.radians(_V12_FOV / 2)) / math.tan(math.radians(_V11_FOV / 2)),
    ),
}


@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking at the origin, in the project's world frame.

    ``camera_to_world`` uses the glTF/OpenGL camera axes (+X right, +Y up, looking down -Z).
    ``intrinsics`` is the usual pixel matrix K with the origin at the top-left pixel corner
    and y pointing down; :meth:`project` shows how the two combine.
    """

    azimuth_deg: float
    elevation_deg: float
    fov_deg: float
    distance: float
    width: int
    height: int

    @property
    def position(self) -> np.ndarray:
        a, e = math.radians(self.azimuth_deg), math.radians(self.elevation_deg)
        return self.distance * np.array(
            [math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)]
        )

    @property
    def camera_to_world(self) -> np.ndarray:
        """4x4 matrix whose columns are the camera's right, up, back axes and its position."""
        eye = self.position
        back = eye / np.linalg.norm(eye)
        world_up = np.array([0.0, 1.0, 0.0])
        right = np.cross(world_up, back)
        if np.linalg.norm(right) < 1e-9:  # looking straight up or down
            right = np.array([1.0, 0.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(back, right)
        matrix = np.eye(4)
        matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = right, up, back, eye
        return matrix

    @property
    def focal_px(self) -> float:
        """Focal length in pixels; the field of view spans the image height."""
        return 0.5 * self.height / math.tan(math.radians(self.fov_deg) / 2)

    @property
    def intrinsics(self) -> np.ndarray:
        f = self.focal_px
        return np.array([[f, 0.0, self.width / 2], [0.0, f, self.height / 2], [0.0, 0.0, 1.0]])

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel coordinates (x right, y down) of world points, shape (N, 3) -> (N, 2)."""
        world_to_camera = np.linalg.inv(self.camera_to_world)
        p = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
        depth = -p[:, 2]
        k = self.intrinsics
        return np.stack(
            [k[0, 2] + k[0, 0] * p[:, 0] / depth, k[1, 2] - k[1, 1] * p[:, 1] / depth], axis=1
        )

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "camera_to_world": self.camera_to_world.tolist(),
            "intrinsics": self.intrinsics.tolist(),
        }


def view_cameras(version: Version = "v1.2", tile_size: int = 320) -> list[Camera]:
    """The six cameras of a model version, in grid order."""
    if version not in VIEW_SETUPS:
        raise ValueError(f"unknown Zero123++ version {version!r}; expected one of {sorted(VIEW_SETUPS)}")
    setup = VIEW_SETUPS[version]
    return [
        Camera(azimuth, elevation, setup.fov_deg, setup.distance, tile_size, tile_size)
        for azimuth, elevation in zip(AZIMUTHS_DEG, setup.elevations_deg)
    ]


def write_cameras_json(cameras: Sequence[Camera], path: str | Path, version: Version) -> None:
    """Write the cameras, with the frame convention spelled out, as JSON."""
    document = {
        "version": version,
        "world_frame": "+Y up, input camera on +Z looking at the origin, metres (glTF)",
        "camera_axes": "camera_to_world columns: +X right, +Y up, +Z back (camera looks down -Z)",
        "intrinsics_pixels": "x right, y down, origin at the top-left corner",
        "grid": {"rows": GRID_ROWS, "cols": GRID_COLS, "order": "row-major"},
        "views": [camera.to_dict() for camera in cameras],
    }
    Path(path).write_text(json.dumps(document, indent=2))


def read_cameras_json(path: str | Path) -> list[Camera]:
    """Read cameras written by :func:`write_cameras_json`."""
    document = json.loads(Path(path).read_text())
    fields = ("azimuth_deg", "elevation_deg", "fov_deg", "distance", "width", "height")
    return [Camera(**{name: view[name] for name in fields}) for view in document["views"]]


def split_grid(grid: Image.Image) -> list[Image.Image]:
    """Cut a 3x2 grid into its six views, in grid order."""
    width, height = grid.size
    if width % GRID_COLS or height % GRID_ROWS or width // GRID_COLS != height // GRID_ROWS:
        raise ValueError(
            f"a six-view grid is {GRID_COLS} square tiles wide and {GRID_ROWS} high "
            f"(640x960 for Zero123++); got {width}x{height}"
        )
    tile = width // GRID_COLS
    return [
        grid.crop(((k % GRID_COLS) * tile, (k // GRID_COLS) * tile,
                   (k % GRID_COLS + 1) * tile, (k // GRID_COLS + 1) * tile))
        for k in range(NUM_VIEWS)
    ]


def join_views(views: Sequence[Image.Image]) -> Image.Image:
    """Place six equally sized square views into a 3x2 grid, in grid order."""
    if len(views) != NUM_VIEWS:
        raise ValueError(f"a grid needs exactly {NUM_VIEWS} views, got {len(views)}")
    sizes = {view.size for view in views}
    if len(sizes) != 1 or (size := sizes.pop())[0] != size[1]:
        raise ValueError(f"views must be square and of one size, got {[v.size for v in views]}")
    modes = {view.mode for view in views}
    mode = modes.pop() if len(modes) == 1 else "RGBA"
    tile = size[0]
    grid = Image.new(mode, (tile * GRID_COLS, tile * GRID_ROWS))
    for k, view in enumerate(views):
        grid.paste(view.convert(mode), ((k % GRID_COLS) * tile, (k // GRID_COLS) * tile))
    return grid


def estimate_background(view: Image.Image) -> np.ndarray:
    """The background colour of a generated view: the median of its outermost pixels."""
    return np.median(_border(np.asarray(view.convert("RGB"), dtype=np.float32)), axis=0)


def _border(image: np.ndarray) -> np.ndarray:
    """The outermost pixels of an (H, W[, C]) array, as (N[, C])."""
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def background_level(difference: np.ndarray, percentile: float) -> float:
    """The ``percentile`` of a view's background noise: of its map of largest channel
    differences to the background colour (8-bit units), on the map's border, leaving out
    object pixels that touch it."""
    border = _border(difference)
    border = border[border <= MAX_MATTE_THRESHOLD]  # the object may touch the border
    return float(np.percentile(border, percentile)) if border.size else MAX_MATTE_THRESHOLD


def off_background(difference: np.ndarray, solid: np.ndarray, edge_reach: int = 3, window: int = 9,
                   min_pixels: int = 15, share: float = 0.35) -> np.ndarray:
    """Parts of the object that the solid region missed though they are not background:
    regions next to ``solid`` whose pixels are each within the background's noise, but off
    its colour as a whole (a grey stripe lit a little brighter than the grey background, a
    box's face shaded to nearly its level). ``difference`` is the view's map of largest
    channel differences to the background colour (8-bit units).

    A pixel more than ``edge_reach`` pixels from ``solid`` (beyond the soft edge, whose
    mixed pixels are off the background too) is off it when, of the pixels beyond the edge
    in the ``window`` x ``window`` around it (at least ``min_pixels``), more than ``share``
    lie above the background's 90th percentile: noise alone puts a tenth of them there, and
    more than a third of a window of 81 is all but impossible. Only regions within
    ``edge_reach + 1`` pixels of the object count, so a shade in the background far from it
    cannot become object; each comes with the edge band between it and the object.

    Written by hand: a regional test of the noise's statistics is no library's matting."""
    level = background_level(difference, 90) + 1.0  # a level more: 8-bit rounding of a flat background
    beyond_edge = ndimage.distance_transform_edt(~solid) > edge_reach
    counted = ndimage.uniform_filter(beyond_edge.astype(np.float32), window)
    above = ndimage.uniform_filter((beyond_edge & (difference > level)).astype(np.float32), window)
    off = beyond_edge & (counted * window**2 >= min_pixels) & (above > share * counted)
    near_object = ndimage.binary_dilation(solid, iterations=edge_reach + 1)
    regions, count = ndimage.label(off)
    if not count:
        return off
    touching = np.zeros(count + 1, bool)
    touching[np.unique(regions[near_object & off])] = True
    touching[0] = False
    off = touching[regions]
    between = ndimage.binary_dilation(off, iterations=edge_reach) & near_object & ~solid
    return off | between


def _with_enclosed_parts(solid: np.ndarray, difference: np.ndarray, noise: float) -> np.ndarray:
    """``solid`` with the regions it encloses that do not look like the background seen
    through a hole (their 90th percentile of ``difference`` over ``noise`` plus 2 levels)."""
    enclosed, count = ndimage.label(ndimage.binary_fill_holes(solid) & ~solid)
    if not count:
        return solid
    typical = ndimage.labeled_comprehension(difference, enclosed, np.arange(1, count + 1),
                                            lambda values: np.percentile(values, 90), np.float32, 0.0)
    part_of_object = np.concatenate([[False], typical > noise + 2.0])
    return solid | part_of_object[enclosed]


def matte_threshold(difference: np.ndarray) -> tuple[float, float]:
    """The background's noise and the default solid threshold of a view, from its map of
    largest channel differences to the background colour (8-bit units).

    The noise is the 99th percentile of the background's (``background_level``); the
    threshold is 6 levels above the noise, from 6 to ``MAX_MATTE_THRESHOLD``.
    """
    noise = background_level(difference, 99)
    return noise, float(np.clip(noise + 6.0, 6.0, MAX_MATTE_THRESHOLD))


def matte_view(
    view: Image.Image,
    background: Sequence[float] | None = None,
    threshold: float | None = None,
    edge_band: int = 2,
    min_component_fraction: float = 0.002,
) -> Image.Image:
    """Turn a generated view on a flat background into RGBA with a soft alpha edge.

    Pixels whose largest channel difference from the background colour exceeds
    ``threshold`` (8-bit units) are solid object. By default the threshold follows the
    background's own noise, measured on the view's border (6 levels above its 99th
    percentile, from 6 to 24), so a clean render keeps grey-ish parts of the object that a
    fixed threshold would cut away. Next to them, regions within the noise pixel by pixel
    but off the background's colour as a whole are solid too (``off_background``): a face
    or a stripe lit to nearly the background's grey. A region the solid pixels enclose is a hole through
    the object when it looks like the background (nine in ten of its pixels within that
    noise, plus 2 levels); otherwise it is a background-coloured part of the object and
    solid. Specks smaller than ``min_component_fraction`` of the view are dropped. On the
    solid region's outer pixel and ``edge_band`` pixels beyond it a pixel is a mix of the
    nearest inner solid colour F and the background B; its alpha is the mixing fraction,
    the projection of (C - B) onto (F - B), and its colour becomes F, so edges stay soft
    and carry no background halo.
    """
    rgb = np.asarray(view.convert("RGB"), dtype=np.float32)
    bg = np.asarray(background if background is not None else estimate_background(view), np.float32)
    difference = np.abs(rgb - bg).max(axis=2)
    noise, default_threshold = matte_threshold(difference)
    if threshold is None:
        threshold = default_threshold
    solid = difference > threshold

    labels, count = ndimage.label(solid)
    if count:
        sizes = ndimage.sum(solid, labels, index=np.arange(1, count + 1))
        keep = np.zeros(count + 1, dtype=bool)
        keep[1:] = sizes >= min_component_fraction * solid.size
        solid = keep[labels]
        # Enclosed regions are judged whole before off_background splits them (one grey
        # square amid black ones, partly off the background, left the rest to look like a
        # hole), and again after it, for the regions its parts have enclosed.
        solid = _with_enclosed_parts(solid, difference, noise)
        solid = _with_enclosed_parts(solid | off_background(difference, solid, edge_reach=edge_band + 1),
                                     difference, noise)
    if not solid.any():
        return Image.fromarray(np.dstack([rgb, np.zeros(rgb.shape[:2])]).astype(np.uint8), "RGBA")

    # The solid region's outermost pixels may themselves be mixed with the background (a
    # low threshold takes in faint ones), so the mix is taken from one pixel further in.
    core = ndimage.binary_erosion(solid)
    core = core if core.any() else solid
    distance, (rows, cols) = ndimage.distance_transform_edt(~core, return_indices=True)
    nearest_colour = rgb[rows, cols]
    towards_object = nearest_colour - bg
    mix = ((rgb - bg) * towards_object).sum(axis=2) / np.maximum((towards_object**2).sum(axis=2), 1.0)
    band = (distance > 0) & (distance <= edge_band + 1)
    alpha = np.where(band, np.clip(mix, 0.0, 1.0), solid.astype(np.float32))
    colour = np.where(band[..., None], nearest_colour, rgb)
    rgba = np.dstack([colour, alpha * 255.0])
    return Image.fromarray(np.round(rgba).astype(np.uint8), "RGBA")
