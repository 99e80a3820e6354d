"""The ``text-to-3d`` command line, run as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from flows.cli import main
from stages.sample_input import draw_sample_object
from stages.six_views import generate_six_views, load_six_view_pipeline


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("text-to-3d")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert "views" in result.stdout and "models" in result.stdout


def test_make_tiny_writes_published_layouts(tmp_path, capsys):
    assert main(["models", "make-tiny", str(tmp_path)]) == 0
    for name in ("zero123plus-v1.2", "zero123plus-v1.1"):
        index = json.loads((tmp_path / name / "model_index.json").read_text())
        assert len(index["ramping_coefficients"]) == 77
        assert (tmp_path / name / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        assert (tmp_path / name / "text_encoder" / "model.safetensors").is_file()
    assert (tmp_path / "controlnet-zp11-depth-v1" / "diffusion_pytorch_model.safetensors").is_file()


def test_views_command_writes_grid_tiles_and_cameras(tiny_checkpoints, tmp_path):
    draw_sample_object(256).save(tmp_path / "in.png")
    out = tmp_path / "views"
    code = main(["views", str(tmp_path / "in.png"), "-o", str(out), "--steps", "1",
                 "--model", str(tiny_checkpoints["zero123plus-v1.2"]), "--device", "cpu"])
    assert code == 0
    assert Image.open(out / "grid.png").size == (640, 960)
    assert [Image.open(out / f"view_{k}.png").size for k in range(6)] == [(320, 320)] * 6
    cameras = json.loads((out / "cameras.json").read_text())
    assert cameras["version"] == "v1.2" and len(cameras["views"]) == 6
    assert not list(out.glob(".partial-*"))


def test_views_command_bad_input_writes_nothing(tiny_checkpoints, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "views"
    code = main(["views", str(tmp_path / "broken.png"), "-o", str(out),
                 "--model", str(tiny_checkpoints["zero123plus-v1.2"])])
    assert code == 2
    assert "broken.png: not a readable image" in capsys.readouterr().err
    assert not out.exists()
    assert main(["views", str(tmp_path / "nope.png"), "-o", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_six_view_stage_with_depth_control(tiny_checkpoints):
    pipeline = load_six_view_pipeline(
        tiny_checkpoints["zero123plus-v1.1"], controlnet=tiny_checkpoints["controlnet-zp11-depth-v1"], device="cpu"
    )
    pipeline.set_progress_bar_config(disable=True)
    depth = Image.new("RGBA", (640, 960), (128, 128, 128, 255))
    result = generate_six_views(draw_sample_object(256), pipeline, version="v1.1", num_inference_steps=1,
                                seed=3, depth_grid=depth)
    assert result.grid.size == (640, 960) and len(result.views) == 6
    assert result.cameras[0].elevation_deg == 30 and result.cameras[0].width == 320


def test_demo_runs_the_mesh_flow_end_to_end_and_the_process_exits_cleanly(u2netp_file, tmp_path):
    """``make run``'s command as a process. Its exit status matters: pymeshlab imported first
    from a stage thread once made every run abort at exit after all files were written."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"),
           "TEXT_TO_3D_MODELS__U2NETP__SOURCE": str(u2netp_file)}
    # the CLI's own wait for its temporary server is what a fresh, slow machine gets
    for name in ("PREFECT_API_URL", "TEXT_TO_3D_STORE", "TEXT_TO_3D_CONFIG",
                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
        env.pop(name, None)
    script = Path(sys.executable).with_name("text-to-3d")
    result = subprocess.run([script, "demo", "--out", str(tmp_path / "demo"), "--steps", "1"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest_uri = result.stdout.split("demo done: ", 1)[1].split()[0]
    manifest = json.loads(Path(manifest_uri.removeprefix("file://")).read_text())
    assert set(manifest["stages"]) >= {"views", "recon", "previews"}
