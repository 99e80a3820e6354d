"""Front stages on tiny random SDXL and SAM checkpoints loaded through the registry, plus the
real u2netp (the ``u2netp_file`` fixture): text to image, cutout, the chain to six views, the registry."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli import main
from stages.cutout import CutoutError, cut_out, refine_alpha
from stages.model_cache import LoadedModel, ModelCache, get_model, model_bytes
from stages.registry import model_spec, registry, resolve
from stages.settings import CONFIG_ENV, load_settings
from stages.six_views import generate_six_views
from stages.text_to_image import text_to_image


@pytest.fixture
def settings(tiny_models_file, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(tiny_models_file))
    return load_settings()


@pytest.fixture
def u2net_settings(settings, u2netp_file, monkeypatch):
    monkeypatch.setenv("TEXT_TO_3D_MODELS__U2NETP__SOURCE", str(u2netp_file))
    return load_settings()


CPU = torch.device("cpu")


def _composite(rgba: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    flat = Image.new("RGB", rgba.size, colour)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


# ----------------------------------------------------------------- registry and residency

def test_registry_names_every_model_with_licence_and_overrides_apply(settings, monkeypatch):
    models = registry(load_settings())
    assert {"sdxl-base", "sdxl-refiner", "sdxl-turbo", "sdxl-lightning", "sam-vit-huge", "sam-vit-base",
            "zero123plus-v1.2", "zero123plus-v1.1", "controlnet-zp11-depth-v1", "u2netp"} <= set(models)
    assert all(spec.licence for spec in models.values())
    monkeypatch.setenv("TEXT_TO_3D_MODELS__ZERO123PLUS_V1_2__REVISION", "abc123")
    assert model_spec("zero123plus-v1.2", load_settings()).revision == "abc123"
    monkeypatch.setenv("TEXT_TO_3D_MODELS__NO_SUCH_MODEL__SOURCE", "/x")
    with pytest.raises(ValueError, match="unknown model"):
        registry(load_settings())


def test_missing_models_are_named_and_never_downloaded_offline(tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("TEXT_TO_3D_MODEL_CACHE_DIR", str(tmp_path))
    settings = load_settings()
    with pytest.raises(ValueError, match="sam-vit-base: cannot obtain checkpoint 'facebook/sam-vit-base'"):
        resolve(model_spec("sam-vit-base", settings), download=False)
    with pytest.raises(ValueError, match="models fetch u2netp"):
        resolve(model_spec("u2netp", settings))
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="no such settings file"):
        load_settings()


def test_model_cache_loads_once_and_evicts_least_recently_used(settings):
    sam = resolve(model_spec("sam-vit-base", settings))
    sdxl = resolve(model_spec("sdxl-base", settings))
    cache = ModelCache()
    first = cache.get(sam, CPU, torch.float32)
    assert cache.get(sam, CPU, torch.float32) is first
    budget = ModelCache(policy="evict", max_resident_bytes=int(1.2 * model_bytes(first)))
    budget.get(sam, CPU, torch.float32)
    with pytest.raises(MemoryError, match="budget"):
        budget.get(sdxl, CPU, torch.float32)  # larger than the whole budget
    assert budget.names == []  # the least recently used model was evicted trying to make room
    with pytest.raises(MemoryError, match="resident"):
        ModelCache(policy="resident", max_resident_bytes=1).get(sam, CPU, torch.float32)


# ----------------------------------------------------------------- text to image

def test_text_to_image_is_seeded_per_prompt_and_batched(settings):
    model = get_model("sdxl-base", settings)
    batch = text_to_image(["a red chair", "a brass lamp"], model, seeds=[3, 4], steps=2, size=64)
    alone = text_to_image("a brass lamp", model, seeds=4, steps=2, size=64)
    # The same seed gives the same image whatever shares the batch (up to float summation order).
    difference = np.abs(np.asarray(batch[1].image, np.int16) - np.asarray(alone[0].image, np.int16))
    assert difference.max() <= 2
    assert not np.array_equal(np.asarray(batch[0].image), np.asarray(batch[1].image))
    metadata = batch[1].metadata
    assert metadata["seed"] == 4 and metadata["steps"] == 2 and metadata["model"]["name"] == "sdxl-base"
    assert metadata["full_prompt"].startswith("a brass lamp, a single whole object")


def test_fast_presets_and_refiner(settings):
    lightning = text_to_image("a mug", get_model("sdxl-lightning", settings), size=64)[0]
    assert (lightning.metadata["steps"], lightning.metadata["guidance"]) == (4, 0.0)
    assert get_model("sdxl-lightning", settings).model.scheduler.config.timestep_spacing == "trailing"
    refined = text_to_image("a mug", get_model("sdxl-base", settings), steps=5, size=64,
                            refiner=get_model("sdxl-refiner", settings))[0]
    assert refined.image.size == (64, 64) and refined.metadata["refiner"]["name"] == "sdxl-refiner"


@pytest.mark.parametrize("prompt, error", [("", ValueError), ("   \n", ValueError), (None, TypeError), (3, TypeError)])
def test_bad_prompts_are_refused(settings, prompt, error):
    with pytest.raises(error, match="prompt"):
        text_to_image(prompt, get_model("sdxl-base", settings), steps=1, size=64)


def test_long_prompt_is_cut_with_a_warning_naming_the_cut(settings, caplog):
    words = " ".join(f"word{index}" for index in range(200))
    with caplog.at_level(logging.WARNING):
        [result] = text_to_image(words, get_model("sdxl-base", settings), steps=1, size=64)
    kept = result.metadata["full_prompt"].split(",")[0].split()
    assert kept == [f"word{index}" for index in range(len(kept))] and len(kept) < 200
    assert f"dropped its last {200 - len(kept)} words: 'word{len(kept)} " in caplog.text


# ----------------------------------------------------------------- cutout

@pytest.mark.parametrize("background", [(255, 255, 255), (236, 226, 204)])
def test_u2net_cutout_of_a_photo_matches_its_alpha(object_photos, u2netp_file, tmp_path, monkeypatch, background):
    monkeypatch.setenv("TEXT_TO_3D_MODELS__U2NETP__SOURCE", str(u2netp_file))
    cut_outs = {name: source for name, source in object_photos.items() if source.mode == "RGBA"}
    for name, source in cut_outs.items():  # the drawn bottle, and the real extinguisher when at hand
        _composite(source, background).save(tmp_path / "in.png")
        args = ["cutout", str(tmp_path / "in.png"), "-o", str(tmp_path / "cut.png"),
                "--segmenter", "u2net", "--reframed", str(tmp_path / "square.png")]
        assert main(args) == 0, name
        cut = Image.open(tmp_path / "cut.png")
        assert cut.mode == "RGBA" and cut.size == source.size
        ours, truth = np.asarray(cut)[..., 3] > 127, np.asarray(source)[..., 3] > 127
        assert (ours & truth).sum() / (ours | truth).sum() >= 0.95, name
        square = Image.open(tmp_path / "square.png")
        assert square.mode == "RGB" and square.width == square.height
        assert square.getpixel((0, 0)) == (127, 127, 127)


def test_sam_cutout_falls_back_to_the_coarse_mask_when_sam_disagrees(u2net_settings, object_photos):
    image = _composite(object_photos["bottle-rgba"], (255, 255, 255))
    u2net = get_model("u2netp", u2net_settings).model
    result = cut_out(image, u2net, get_model("sam-vit-base", u2net_settings).model)
    # A random tiny SAM segments nothing like the object (its best mask overlaps the bottle by
    # IoU 0.29): the coarse mask is kept, exactly as u2net alone cuts it, and said so.
    assert result.segmenter == "u2net"
    assert len(result.warnings) == 1 and result.warnings[0].startswith("SAM's masks disagree with the coarse mask")
    assert np.array_equal(np.asarray(result.cutout), np.asarray(cut_out(image, u2net, segmenter="u2net").cutout))


def test_cutout_refuses_images_without_object_or_background(u2net_settings):
    u2net = get_model("u2netp", u2net_settings).model
    with pytest.raises(CutoutError):
        cut_out(Image.new("RGB", (128, 128), (250, 250, 250)), u2net, segmenter="u2net")
    with pytest.raises(CutoutError, match="no background"):
        refine_alpha(np.ones((64, 64), np.float32))
    with pytest.raises(CutoutError, match="no object"):
        refine_alpha(np.zeros((64, 64), np.float32))


def test_mask_clean_up_warns_about_parts_and_borders_and_fills_pinholes():
    probability = np.zeros((100, 100), np.float32)
    probability[20:60, 20:60] = 1.0
    probability[38:40, 38:40] = 0.0  # a pinhole: mask noise
    probability[70:90, 70:100] = 1.0  # a second object, touching the right border
    alpha, warnings = refine_alpha(probability)
    assert alpha[38:40, 38:40].min() == 1.0
    assert any("2 disjoint objects" in w for w in warnings)
    assert any("border (right)" in w for w in warnings)
    ring = np.zeros((100, 100), np.float32)
    ring[20:80, 20:80] = 1.0
    ring[35:65, 35:65] = 0.0  # a real opening (25 % of the object) stays open
    alpha, warnings = refine_alpha(ring)
    assert alpha[50, 50] == 0.0 and warnings == []


# ----------------------------------------------------------------- the chain

def test_prompt_to_image_to_cutout_to_six_views_on_tiny_models(u2net_settings):
    [generated] = text_to_image("a red chair", get_model("sdxl-base", u2net_settings), seeds=2, steps=3, size=128)
    cutout = cut_out(generated.image, get_model("u2netp", u2net_settings).model,
                     get_model("sam-vit-huge", u2net_settings).model)
    assert cutout.cutout.size == generated.image.size and cutout.reframed.width == cutout.reframed.height
    six_views = get_model("zero123plus-v1.2", u2net_settings)
    assert isinstance(six_views, LoadedModel)
    result = generate_six_views(cutout.reframed, six_views.model, num_inference_steps=2)
    assert len(result.views) == 6 and result.grid.size == (640, 960)


# ----------------------------------------------------------------- command line

def test_models_commands(tiny_models_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CONFIG_ENV, str(tiny_models_file))
    monkeypatch.setenv("TEXT_TO_3D_MODEL_CACHE_DIR", str(tmp_path))
    assert main(["models", "list"]) == 0
    assert "sam-vit-huge" in capsys.readouterr().out
    assert main(["models", "check", "sdxl-base", "sam-vit-huge"]) == 0
    assert main(["models", "check", "u2netp", "--no-load"]) == 2
    report = capsys.readouterr()
    assert "FAILED  u2netp" in report.out and "models fetch u2netp" in report.out


def test_image_command_writes_image_and_metadata(tiny_models_file, tmp_path):
    output = tmp_path / "chair.png"
    assert main(["--config", str(tiny_models_file), "image", "a chair", "-o", str(output),
                 "--size", "64", "--steps", "2"]) == 0
    assert Image.open(output).size == (64, 64)
    assert '"seed": 0' in output.with_suffix(".json").read_text()
    assert main(["--config", str(tiny_models_file), "image", " ", "-o", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()
