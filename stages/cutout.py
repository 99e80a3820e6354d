"""Cutout stage: separate the object from its background and re-frame it for Zero123++.

Segment Anything draws excellent edges but needs a prompt; u2netp (a 4.7 MB salient-object
network) finds "the object" without one but with softer, less exact edges. So u2netp's
coarse mask prompts SAM with a box and interior points, SAM's candidates are judged by
agreement with that coarse mask and by SAM's own quality score, and the winner is cleaned
(stray specks dropped, pinholes filled) and given a soft alpha edge. ``segmenter="u2net"``
skips SAM for machines without its weights.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)

Segmenter = Literal["sam", "u2net"]
U2NET_SIZE = 320
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
OBJECT_FILL = 0.85  # share of the square's side the object spans after re-framing
GREY = 127  # Zero123++'s background
MIN_REFRAMED_SIDE = 320
MIN_OBJECT_SHARE = 0.0005  # below this share of the image the mask counts as empty
MAX_OBJECT_SHARE = 0.95  # above it no background is left to separate from
COMPANION_SHARE = 0.15  # components this big relative to the largest count as parts of the object
PINHOLE_SHARE = 0.01  # holes this small relative to the object are mask noise, not openings
MIN_SAM_AGREEMENT = 0.5  # below this IoU with the coarse mask SAM has segmented something else


class CutoutError(ValueError):
    """The image cannot be cut out (no object, or no background), with the reason."""


@dataclass
class Cutout:
    """The cut-out object at the input's size and position, and its re-framed versions."""

    cutout: Image.Image
    reframed: Image.Image
    reframed_rgba: Image.Image
    segmenter: Segmenter
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def cut_out(image: Image.Image, u2net: Any, sam: Any | None = None, segmenter: Segmenter = "sam") -> Cutout:
    """Cut the one object out of ``image``.

    ``u2net`` is an onnxruntime session of u2netp; ``sam`` a ``SamBundle`` (needed when
    ``segmenter="sam"``). Raises ``CutoutError`` when no object or no background is found;
    an object touching the border or split into several parts gives a warning.
    """
    if segmenter not in ("sam", "u2net"):
        raise ValueError(f"segmenter must be 'sam' or 'u2net', got {segmenter!r}")
    if segmenter == "sam" and sam is None:
        raise ValueError("segmenter 'sam' needs a loaded SAM model")
    rgb = _flatten(image)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    coarse = coarse_foreground(rgb, u2net)
    timings["u2net"] = time.perf_counter() - started
    _check_mask_share(coarse > 0.5)

    warnings: list[str] = []
    probability = coarse
    used: Segmenter = "u2net"
    if segmenter == "sam":
        started = time.perf_counter()
        probability, agreement = sam_foreground(rgb, coarse > 0.5, sam)
        timings["sam"] = time.perf_counter() - started
        if agreement < MIN_SAM_AGREEMENT:
            warnings.append(f"SAM's masks disagree with the coarse mask (IoU {agreement:.2f}); kept the coarse mask")
            probability = coarse
        else:
            used = "sam"

    started = time.perf_counter()
    alpha, mask_warnings = refine_alpha(probability)
    warnings += mask_warnings
    cutout = Image.fromarray(np.dstack([np.asarray(rgb), _to_uint8(alpha)]), "RGBA")
    reframed_rgba = reframe(cutout)
    timings["post_process"] = time.perf_counter() - started
    for warning in warnings:
        logger.warning("cutout: %s", warning)
    return Cutout(
        cutout=cutout,
        reframed=composite(reframed_rgba, (GREY, GREY, GREY)),
        reframed_rgba=reframed_rgba,
        segmenter=used,
        warnings=warnings,
        metadata={"object_share": round(float((alpha > 0.5).mean()), 4),
                  "seconds": {k: round(v, 4) for k, v in timings.items()}},
    )


def coarse_foreground(image: Image.Image, session: Any, stretch: bool = True) -> np.ndarray:
    """u2netp's salient-object probability at the image's own size, in [0, 1].

    ``stretch`` rescales the prediction to span [0, 1], as rembg does for a photo that
    surely holds an object; an image that may show none (a view of an object coloured like
    its background) needs u2netp's own probability, which stretching would turn into noise.
    """
    small = np.asarray(image.resize((U2NET_SIZE, U2NET_SIZE), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    small = (small / max(float(small.max()), 1e-6) - IMAGENET_MEAN) / IMAGENET_STD
    batch = small.transpose(2, 0, 1)[None].astype(np.float32)
    prediction = session.run(None, {session.get_inputs()[0].name: batch})[0][0, 0]
    if stretch:
        low, high = float(prediction.min()), float(prediction.max())
        prediction = (prediction - low) / max(high - low, 1e-8)
    full = Image.fromarray(prediction.astype(np.float32), "F").resize(image.size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(full), 0.0, 1.0)


def sam_foreground(image: Image.Image, coarse: np.ndarray, sam: Any) -> tuple[np.ndarray, float]:
    """SAM's best mask for the object the coarse mask found, as a soft probability.

    Prompts: the coarse mask's bounding box and its most interior point per component.
    Returns the probability and the chosen mask's IoU with the coarse mask.
    """
    import torch  # here, not at the top: view matting uses this module's u2netp half before torch loads

    rows, cols = np.nonzero(coarse)
    box = [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]
    points = _interior_points(coarse)
    inputs = sam.processor(
        images=image, input_boxes=[[box]], input_points=[[points]], input_labels=[[[1] * len(points)]],
        return_tensors="pt",
    )
    model_inputs = {k: v.to(sam.model.device) for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")}
    model_inputs["pixel_values"] = model_inputs["pixel_values"].to(sam.model.dtype)
    with torch.no_grad():
        output = sam.model(**model_inputs, multimask_output=True)
    logits = sam.processor.image_processor.post_process_masks(
        output.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
    )[0][0]
    predicted_quality = output.iou_scores.float().cpu()[0, 0]
    best_score, best = -math.inf, (np.zeros_like(coarse, dtype=np.float32), 0.0)
    for candidate, quality in zip(logits, predicted_quality):
        mask = candidate.numpy() > 0.0
        agreement = float((mask & coarse).sum() / max((mask | coarse).sum(), 1))
        score = 0.7 * agreement + 0.3 * float(quality)
        if score > best_score:
            best_score, best = score, (torch.sigmoid(candidate).numpy(), agreement)
    return best


def refine_alpha(probability: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Clean a foreground probability into an alpha matte, with warnings about the object.

    Keeps the largest component and those at least ``COMPANION_SHARE`` of it, fills pinholes,
    and keeps the soft probability only in a thin band around the cleaned edge.
    """
    mask = probability > 0.5
    _check_mask_share(mask)
    labels, areas = _components(mask)
    keep = 1 + np.flatnonzero(areas >= COMPANION_SHARE * areas.max())
    clean = np.isin(labels, keep)
    warnings = []
    if len(keep) > 1:
        warnings.append(f"found {len(keep)} disjoint objects; Zero123++ expects one, all are kept")

    holes = ndimage.binary_fill_holes(clean) & ~clean
    hole_labels, hole_areas = _components(holes)
    pinholes = np.isin(hole_labels, 1 + np.flatnonzero(hole_areas < PINHOLE_SHARE * clean.sum()))
    clean |= pinholes

    sides = {"top": clean[0].any(), "bottom": clean[-1].any(), "left": clean[:, 0].any(), "right": clean[:, -1].any()}
    touching = [side for side, touches in sides.items() if touches]
    if touching:
        warnings.append(f"the object touches the image border ({', '.join(touching)}): it may be cut off")

    band = max(2, round(0.004 * max(mask.shape)))
    core = ndimage.binary_erosion(clean, iterations=band, border_value=1)
    support = ndimage.binary_dilation(clean, iterations=band)
    alpha = np.where(core | pinholes, 1.0, np.where(support, probability, 0.0))
    return alpha.astype(np.float32), warnings


def reframe(cutout: Image.Image, fill: float = OBJECT_FILL, min_side: int = MIN_REFRAMED_SIDE) -> Image.Image:
    """Crop an RGBA cutout to its object and centre it in a transparent square it spans ``fill`` of.

    Small objects are enlarged so the square is at least ``min_side`` pixels (Zero123++
    v1.2 conditions on 320 px); large ones keep their full resolution.
    """
    box = cutout.getchannel("A").point(lambda value: 255 if value > 4 else 0).getbbox()
    if box is None:
        raise CutoutError("the cutout is empty")
    crop = cutout.crop(box)
    side = max(min_side, math.ceil(max(crop.size) / fill))
    scale = side * fill / max(crop.size)
    if scale > 1.0:
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                           Image.Resampling.LANCZOS)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    return square


def composite(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Flatten an RGBA image onto a solid colour."""
    flat = Image.new("RGB", image.size, background)
    flat.paste(image, mask=image.getchannel("A"))
    return flat


def _flatten(image: Image.Image) -> Image.Image:
    """RGB for the segmenters; transparent pixels of an RGBA input become white."""
    if image.mode == "RGBA":
        return composite(image, (255, 255, 255))
    return image.convert("RGB")


def _check_mask_share(mask: np.ndarray) -> None:
    share = float(mask.mean())
    if share < MIN_OBJECT_SHARE:
        raise CutoutError("no object found: the foreground mask is empty")
    if share > MAX_OBJECT_SHARE:
        raise CutoutError(f"the foreground covers {share:.0%} of the image: no background found to cut away")


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected-component labels of ``mask`` (1..N) and the pixel area of each, in label order."""
    labels, count = ndimage.label(mask)
    return labels, ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))


def _interior_points(mask: np.ndarray, limit: int = 3) -> list[list[float]]:
    """The most interior pixel (distance-transform peak) of each of the largest components."""
    labels, areas = _components(mask)
    points = []
    for label in 1 + np.argsort(areas)[::-1][:limit]:
        if areas[label - 1] < COMPANION_SHARE * areas.max():
            break
        distance = ndimage.distance_transform_edt(labels == label)
        row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
        points.append([float(col) + 0.5, float(row) + 0.5])
    return points


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
