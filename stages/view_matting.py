"""Matting of the six views: each view's object from its flat background, by colour and,
where colour cannot tell them apart, by u2netp (the cutout stage's salient-object model).

Kept free of torch and the reconstruction libraries, so the CLI mats the views on a worker
thread while those import."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from stages.cutout import coarse_foreground
from stages.image_input import open_image
from stages.registry import model_spec, open_onnx, resolve
from zero123pp import matte_view, split_grid
from zero123pp.views import NUM_VIEWS, estimate_background, matte_threshold, off_background

if TYPE_CHECKING:  # the model cache imports torch and diffusers, which matting never needs
    from stages.model_cache import LoadedModel
    from stages.settings import Settings

logger = logging.getLogger(__name__)

# u2netp's probability above which it is sure of object, and below one minus which of background.
LEARNED_MATTE_CONFIDENCE = 0.8
# 8-bit levels: an object edge this much brighter or darker than the background is located
# exactly by the colour matte, so u2netp's coarser edge is not taken over it there.
CRISP_EDGE = 32.0
# Share of a region the object encloses whose pixels must pass both tests for it to be closed.
ENCLOSED_AGREEMENT = 0.9


def open_views(source: str | Path) -> list[Image.Image]:
    """Six views from a grid image or from a folder holding ``view_0.png`` .. ``view_5.png``."""
    source = Path(source)
    if source.is_dir():
        paths = [source / f"view_{index}.png" for index in range(NUM_VIEWS)]
        missing = [path.name for path in paths if not path.is_file()]
        if missing:
            raise ValueError(f"{source}: a view folder needs view_0.png .. view_5.png; missing {', '.join(missing)}")
        return [open_image(path) for path in paths]
    if not source.is_file():
        raise ValueError(f"{source}: no such file or folder")
    return split_grid(open_image(source))


def to_rgba_views(views: list[Image.Image], u2net: Any | None = None) -> list[np.ndarray]:
    """Float RGBA views: alpha when the image has a meaningful one, else matted from the
    flat background colour (soft edges kept), with ``u2net`` (an onnxruntime session of
    u2netp) restoring the object's background-coloured parts (:func:`learned_matte`)."""
    arrays = []
    for view in views:
        has_alpha = view.mode in ("RGBA", "LA") and np.asarray(view.getchannel("A")).min() < 255
        if has_alpha:
            rgba = view.convert("RGBA")
        else:
            rgba = matte_view(view) if u2net is None else learned_matte(view, u2net)
        arrays.append(np.asarray(rgba, np.float32) / 255.0)
    return arrays


def learned_matte(view: Image.Image, u2net: Any) -> Image.Image:
    """The colour matte of a view on a flat background, corrected by u2netp where colour
    cannot tell the object from the background.

    Colour difference alone cuts away whatever part of the object has the background's
    colour: grey fur, stone and metal on Zero123++'s grey. u2netp, run on the view at its
    native 320 px, judges shape rather than colour; its verdict counts where it is
    confident (probability above ``LEARNED_MATTE_CONFIDENCE`` for object, below one minus
    that for background), and the colour matte stands wherever u2netp is unsure.

    - A pixel the colour matte calls background becomes solid object where u2netp is
      confident of it and the nearest solid pixel differs from the background by less than
      ``CRISP_EDGE``: the object fades into the background colour there, so the colour
      matte's edge is arbitrary. Next to a crisp edge the colour matte is exact and
      u2netp's coarser mask (which fills narrow gaps, between legs say) is not taken.
    - u2netp fills holes through an object (a mug's handle) as confidently as it finds grey
      patches on it, so a region the colour matte found enclosed by the object is restored
      whole, where ``ENCLOSED_AGREEMENT`` of its pixels pass, or not at all.
    - A solid pixel no further from the background colour than the matting threshold (an
      enclosed region colour judged part of the object, a faint edge) becomes background
      where u2netp is confident of that: a hole colour closed because the object's grey
      rim around it was lost too.
    - What colour finds off the background as a whole (``off_background``: a box's face
      shaded to nearly the background's grey) stays solid, though u2netp may see
      background there: colour's statistics over a region outweigh u2netp's guess.
    """
    rgb = np.asarray(view.convert("RGB"))
    background = estimate_background(view)
    matte = np.array(matte_view(view, background))
    contrast = np.abs(rgb.astype(np.float32) - background).max(axis=2)
    _, threshold = matte_threshold(contrast)
    solid = matte[..., 3] >= 128
    faint = solid & (contrast <= threshold)
    faint &= ~off_background(contrast, solid & ~faint)  # what colour itself found off the background
    edge_contrast = _edge_contrast(solid, contrast)
    if not faint.any() and (edge_contrast[~solid] >= CRISP_EDGE).all() and not ndimage.binary_fill_holes(solid)[~solid].any():
        # Crisp edges all round and nothing enclosed: u2netp could change no pixel (below),
        # so its 0.25 s per tile is saved.
        return Image.fromarray(matte, "RGBA")
    probability = coarse_foreground(view.convert("RGB"), u2net, stretch=False)
    # Reopened first: the edges and enclosed regions below are those of the corrected matte.
    reopen = faint & (probability < 1.0 - LEARNED_MATTE_CONFIDENCE)
    if reopen.any():
        matte[reopen, 3] = 0
        solid = matte[..., 3] >= 128
        edge_contrast = _edge_contrast(solid, contrast)
    restore = (probability > LEARNED_MATTE_CONFIDENCE) & ~solid & (edge_contrast < CRISP_EDGE)
    holes, count = ndimage.label(ndimage.binary_fill_holes(solid) & ~solid)
    if count:
        passing = ndimage.mean(restore, holes, np.arange(1, count + 1))
        part_of_object = np.concatenate([[False], passing >= ENCLOSED_AGREEMENT])
        restore = np.where(holes > 0, part_of_object[holes], restore)
    matte[restore] = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])[restore]
    return Image.fromarray(matte, "RGBA")


def _edge_contrast(solid: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Per pixel, the background contrast of the nearest pixel inside ``solid``'s edge: as
    in matte_view, the solid region's outermost pixels may be mixed with the background,
    so an edge's contrast is read one pixel further in."""
    core = ndimage.binary_erosion(solid)
    if not core.any():
        return np.zeros_like(contrast)
    _, (rows, cols) = ndimage.distance_transform_edt(~core, return_indices=True)
    return contrast[rows, cols]


def view_matting_model(settings: Settings) -> LoadedModel | None:
    """u2netp for :func:`learned_matte` from the process's model cache (loaded once, with
    its lineage), or ``None`` when it is not on this machine (:func:`_or_colour_alone`)."""
    from stages.model_cache import get_model

    return _or_colour_alone(lambda: get_model("u2netp", settings))


def view_matting_session(settings: Settings) -> Any | None:
    """u2netp's onnxruntime session opened straight from its file, or ``None`` as above:
    no model cache and so no torch, for a one-shot process (the CLI) that mats the views
    while torch and the reconstruction libraries import."""
    return _or_colour_alone(lambda: open_onnx(resolve(model_spec("u2netp", settings)).path))


def _or_colour_alone(load: Callable[[], Any]) -> Any | None:
    """What ``load`` returns, or ``None`` when the model is missing: the views are then
    matted by colour alone, and a warning says how to fetch it."""
    try:
        return load()
    except ValueError as error:
        logger.warning("views are matted by colour alone, so background-coloured parts of the object "
                       "may be lost: %s", error)
        return None
