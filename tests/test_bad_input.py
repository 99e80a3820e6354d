"""The bad-input catalogue (issue 17): what a new user gets wrong, and what they are told.

Every case asserts the exit status, the one-line message naming the problem, and what is
left on disk: nothing. No case loads a model: a bad option, a bad output path or an input
with no object is refused before any.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from flows.batch import row_request
from flows.cli import build_parser, main
from flows.requests import AssetOptions, request_asset_id
from flows.store import input_version
from recon.files import write_atomically, write_set_atomically
from stages.retexture import load_blockout
from stages.sample_input import draw_sample_object
from stages.six_views import require_object
from stages.text_to_image import prompt_words


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of one command, whether argparse or the handler refused it."""
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if " error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


# One table, two doors: the command line and the flows' options (and batch rows) refuse the
# same values with the same reason. (flag, command, option field, bad value, reason)
BOUNDS = [
    ("--texture-size", "reconstruct", "texture_size", "100000", "power of two from 64 to 8192"),
    ("--texture-size", "reconstruct", "texture_size", "3", "power of two from 64 to 8192"),
    ("--texture-size", "reconstruct", "texture_size", "100", "power of two from 64 to 8192"),
    ("--texture-size", "reconstruct", "texture_size", "16384", "power of two from 64 to 8192"),
    ("--texture-size", "reconstruct", "texture_size", "0", "power of two from 64 to 8192"),
    ("--target-faces", "reconstruct", "target_faces", "-5", "from 100 to 2,000,000"),
    ("--target-faces", "reconstruct", "target_faces", "0", "from 100 to 2,000,000"),
    ("--target-faces", "reconstruct", "target_faces", "99", "from 100 to 2,000,000"),
    ("--target-faces", "reconstruct", "target_faces", "2000001", "from 100 to 2,000,000"),
    ("--lods", "reconstruct", "lods", "0", "from 1 to 6"),
    ("--lods", "reconstruct", "lods", "7", "from 1 to 6"),
    ("--height", "reconstruct", "height", "nan", "finite, positive height"),
    ("--height", "reconstruct", "height", "inf", "finite, positive height"),
    ("--height", "reconstruct", "height", "0", "finite, positive height"),
    ("--height", "reconstruct", "height", "-1.5", "finite, positive height"),
    ("--size", "image", "image_size", "0", "multiple of 8 from 64 to 2048"),
    ("--size", "image", "image_size", "60", "multiple of 8 from 64 to 2048"),
    ("--size", "image", "image_size", "100", "multiple of 8 from 64 to 2048"),
    ("--size", "image", "image_size", "4096", "multiple of 8 from 64 to 2048"),
    ("--steps", "image", "image_steps", "0", "from 1 to 200"),
    ("--steps", "image", "image_steps", "201", "from 1 to 200"),
    ("--steps", "views", "view_steps", "0", "from 1 to 200"),
    ("--steps", "views", "view_steps", "1000", "from 1 to 200"),
]

COMMAND_ARGS = {
    "reconstruct": ["reconstruct", "views.png", "-o", "{out}/a.glb"],
    "image": ["image", "a chest", "-o", "{out}/a.png"],
    "views": ["views", "in.png", "-o", "{out}/views"],
}


def command(name: str, out: Path, *extra: str) -> list[str]:
    return [arg.format(out=out) for arg in COMMAND_ARGS[name]] + list(extra)


@pytest.mark.parametrize("flag, name, field, value, reason", BOUNDS)
def test_cli_refuses_out_of_bounds_options_while_parsing(flag, name, field, value, reason, tmp_path, capsys):
    code, err = run_cli(command(name, tmp_path, flag, value), capsys)
    assert_one_line_error(code, err, f"argument {flag}", reason)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("flag, name, field, value, reason", BOUNDS)
def test_flow_options_and_batch_rows_refuse_the_same_values(flag, name, field, value, reason):
    with pytest.raises(ValueError, match=reason):
        AssetOptions(**{field: value})
    with pytest.raises(ValueError) as refused:
        row_request({"prompt": "a chest", field: value}, {})
    assert str(refused.value).startswith(f"{field}: must") and reason in str(refused.value)


@pytest.mark.parametrize("flag, name, value", [
    ("--texture-size", "reconstruct", "big"), ("--lods", "reconstruct", "2.5"), ("--height", "reconstruct", "tall"),
    ("--target-faces", "reconstruct", "1e4"), ("--size", "image", "512px"), ("--steps", "views", "many"),
])
def test_cli_names_the_option_of_a_value_that_is_not_a_number(flag, name, value, tmp_path, capsys):
    code, err = run_cli(command(name, tmp_path, flag, value), capsys)
    assert_one_line_error(code, err, f"argument {flag}", "number", repr(value))
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("argv, needle", [
    (["run", "batch", "m.csv", "--concurrency", "0"], "argument --concurrency: must be at least 1"),
    (["serve", "--gpus", "0"], "argument --gpus: must be at least 1"),
    (["demo", "--steps", "0"], "argument --steps: must be a number of steps"),
    (["reconstruct", "v.png", "-o", "a.glb", "--version", "v2"], "argument --version: invalid choice"),
    (["cutout", "in.png", "-o", "o.png", "--segmenter", "magic"], "argument --segmenter: invalid choice"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["views", "in.png"], "the following arguments are required: -o/--output"),
])
def test_other_command_line_mistakes_are_one_line(argv, needle, capsys):
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, needle)
    assert len(err.strip().splitlines()) == 1  # no usage block


@pytest.mark.parametrize("flag, value", [
    ("--texture-size", "64"), ("--texture-size", "8192"), ("--target-faces", "100"), ("--target-faces", "2000000"),
    ("--lods", "1"), ("--lods", "6"), ("--height", "0.01"), ("--height", "250"),
])
def test_cli_accepts_the_bounds_themselves(flag, value):
    args = build_parser().parse_args(["reconstruct", "v.png", "-o", "a.glb", flag, value])
    assert getattr(args, flag[2:].replace("-", "_")) == float(value)


def test_flow_options_accept_the_bounds_themselves():
    options = AssetOptions(texture_size=8192, target_faces=100, lods=6, height=0.5, image_size=2048,
                           image_steps=200, view_steps=1)
    assert (options.texture_size, options.target_faces, options.image_size) == (8192, 100, 2048)
    assert AssetOptions(image_size=64, texture_size="64").texture_size == 64


@pytest.mark.parametrize("option, needle", [
    ("texture_size=3", "--option texture_size: must be a power of two"),
    ("lods=0", "--option lods: must be a number of LODs"),
    ("height=nan", "--option height: must be a finite, positive height"),
    ("image_size=100", "--option image_size: must be a multiple of 8"),
    ("view_steps=0", "--option view_steps: must be a number of steps"),
    ("target_faces=-5", "--option target_faces: must be a face count"),
    ("lods=three", "--option lods: Input should be a valid integer"),
    ("colour=red", "--option colour: Extra inputs are not permitted"),
    ("texture_size", "--option 'texture_size': write KEY=VALUE"),
])
def test_run_refuses_bad_options_before_any_flow_starts(option, needle, tmp_path, capsys):
    for flow in ("text", "batch"):
        code, err = run_cli(["run", flow, "a chest" if flow == "text" else str(tmp_path / "m.csv"),
                             "--option", option], capsys)
        assert_one_line_error(code, err, needle)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("argv, needle", [
    (["reconstruct", "views.png", "-o", "{out}/a.gltf"], "-o must name a .glb file"),
    (["reconstruct", "views.png", "-o", "{out}/afile/a.glb"], "afile is a file, not a folder"),
    (["reconstruct", "views.png", "-o", "{out}/folder.glb"], "folder.glb: is a folder; name a file"),
    (["reconstruct", "views.png", "-o", "{out}/a.glb", "--export-nerfstudio", "{out}/afile"], "exists and is not a folder"),
    (["cutout", "in.png", "-o", "{out}/cut.jpg"], "JPEG has no transparency"),
    (["cutout", "in.png", "-o", "{out}/cut.txt"], "cut.txt: not an image suffix"),
    (["cutout", "in.png", "-o", "{out}/cut"], "cut: not an image suffix"),
    (["cutout", "in.png", "-o", "{out}/cut.png", "--reframed", "{out}/square.doc"], "square.doc: not an image suffix"),
    (["cutout", "in.png", "-o", "{out}/afile/cut.png"], "afile is a file, not a folder"),
    (["image", "a chest", "-o", "{out}/chest.txt"], "chest.txt: not an image suffix"),
    (["image", "a chest", "-o", "{out}/afile/chest.png"], "afile is a file, not a folder"),
    (["image", "a chest", "-o", "{out}/folder.glb/chest"], "chest: not an image suffix"),
    (["views", "in.png", "-o", "{out}/afile"], "afile: exists and is not a folder"),
    (["views", "in.png", "-o", "{out}/afile/views"], "afile is a file, not a folder"),
])
def test_outputs_are_checked_before_any_model_runs(argv, needle, tmp_path, capsys):
    """No model is configured at these paths: a check that ran after loading one would
    fail on the model instead."""
    (tmp_path / "afile").write_text("taken")
    (tmp_path / "folder.glb").mkdir()
    before = files_under(tmp_path)
    code, err = run_cli([arg.format(out=tmp_path) for arg in argv], capsys)
    assert_one_line_error(code, err, needle)
    assert files_under(tmp_path) == before


def test_an_os_error_on_the_output_path_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("taken")
    code, err = run_cli(["models", "make-tiny", str(tmp_path / "afile" / "models")], capsys)
    assert_one_line_error(code, err, f"{tmp_path / 'afile'}", "Not a directory")
    assert files_under(tmp_path) == ["afile"]


@pytest.mark.parametrize("make, needle", [
    (lambda: Image.new("RGBA", (256, 256), (0, 0, 0, 0)), "no object found: 0.00% of the image is opaque"),
    (lambda: Image.new("RGBA", (256, 256), (200, 30, 30, 1)), "no object found"),
    (lambda: Image.new("RGB", (256, 256), (128, 128, 128)), "no object found: the image is one flat colour"),
])
def test_views_refuses_an_image_with_no_object_as_cutout_does(make, needle, tmp_path, capsys):
    make().save(tmp_path / "in.png")
    code, err = run_cli(["views", str(tmp_path / "in.png"), "-o", str(tmp_path / "views")], capsys)
    assert_one_line_error(code, err, needle)
    assert files_under(tmp_path) == ["in.png"]
    with pytest.raises(ValueError, match="no object found"):
        require_object(make())
    require_object(draw_sample_object(128))  # an object passes


@pytest.mark.parametrize("prompt, needle", [
    ("a\x00chest", "control character U+0000 at position 1"),
    ("a chest\x1b[31m", "control character U+001B"),
    ("\x7f", "control character U+007F"),
    ("", "prompt is empty"),
    (" \t\n ", "prompt is empty"),
])
def test_image_refuses_prompts_with_control_characters_or_no_words(prompt, needle, tmp_path, capsys):
    code, err = run_cli(["image", prompt, "-o", str(tmp_path / "a.png")], capsys)
    assert_one_line_error(code, err, needle)
    assert files_under(tmp_path) == []


def test_prompts_keep_ordinary_whitespace_and_unicode():
    assert prompt_words("a\tmossy\nchest, café ✓") == ["a", "mossy", "chest,", "café", "✓"]


def test_a_manifest_row_with_a_nul_byte_fails_with_the_reason():
    with pytest.raises(ValueError, match="control character U\\+0000"):
        request_asset_id(row_request({"prompt": "treasure\x00chest"}, {}))


@pytest.mark.parametrize("row, needle", [
    ({"prompt": "a", "texture_size": "100", "lods": "0"}, "got 100; lods: must be a number of LODs"),
    ({"prompt": "a", "seed": "x"}, "seed: Input should be a valid integer"),
    ({"prompt": "a", "wings": "2"}, "wings: Extra inputs are not permitted"),
    ({"mesh": "a.obj"}, "exactly one of prompt or image"),
])
def test_a_batch_rows_reasons_name_its_columns_on_one_line(row, needle):
    with pytest.raises(ValueError) as refused:
        row_request(row, {})
    assert needle in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("data, suffix, needle", [
    (b"\x89PNG\r\n\x1a\n not really", "png", "not a readable image"),
    (b"hello", "jpg", "not a readable image (not PNG, JPEG or WebP data)"),
    (b"", "webp", "not a readable image"),
])
def test_an_unreadable_image_from_bytes_is_named_not_shown_as_a_stream(data, suffix, needle):
    from stages.image_input import open_image

    with pytest.raises(ValueError) as refused:
        open_image(data, name=f"s3://bucket/photo.{suffix}")
    message = str(refused.value)
    assert message.startswith(f"s3://bucket/photo.{suffix}: ") and needle in message and "BytesIO" not in message


@pytest.mark.parametrize("data, suffix, needle", [
    (b"", "obj", "holds no triangles"),
    (b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "obj", "holds no triangles"),
    (b"v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n", "obj", "NaN or infinity"),
    (b"v 0 0 0\nv 1 0 0\nv inf 1 0\nf 1 2 3\n", "obj", "NaN or infinity"),
    (b"v 0 0 0\nv 0 0 0\nv 0 0 0\nf 1 2 3\n", "obj", "all vertices coincide"),
    (b"OFF\n3 5000000 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n3 0 1 2\n", "off",
     "the header declares 3 vertices and 5000000 faces; the file holds 3 and 2"),
    (b"OFF\n# made by hand\n3 9 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "off", "declares 3 vertices and 9 faces"),
    (b"OFF\n300 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "off", "not a readable off mesh"),
    (b"OFF\nthree one zero\n", "off", "not a readable off mesh"),
    (b"ply\nformat ascii 1.0\nelement vertex 9\n", "ply", "not a readable ply mesh"),
    (b"not a glb", "glb", "not a readable glb mesh"),
    (b"solid x\nendsolid x\n", "stl", "holds no triangles"),
    (b"v 0 0 0\n", "fbx", "unsupported mesh format 'fbx'"),
])
def test_a_bad_mesh_is_refused_in_seconds_naming_the_file(data, suffix, needle):
    with pytest.raises(ValueError) as refused:
        load_blockout(data, suffix, name=f"blockout.{suffix}")
    assert str(refused.value).startswith(f"blockout.{suffix}: ") and needle in str(refused.value)


def test_an_honest_off_file_with_a_quad_loads():
    mesh = load_blockout(b"OFF\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n", "off", name="quad.off")
    assert len(mesh.faces) == 2


def test_missing_s3_credentials_name_the_settings(monkeypatch, tmp_path):
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps credentials an earlier test found
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to find either
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ValueError) as refused:
        input_version("s3://bucket/photo.png", "http://127.0.0.1:9")
    message = str(refused.value)
    assert "no S3 credentials" in message and "s3://bucket/photo.png" in message
    assert "AWS_ACCESS_KEY_ID" in message and "TEXT_TO_3D_S3_ENDPOINT_URL" in message


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_follow_the_umask(umask, mode, tmp_path):
    previous = os.umask(umask)
    try:
        write_atomically(tmp_path / "a.glb", b"glTF")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.glb").stat().st_mode & 0o777 == mode
    assert files_under(tmp_path) == ["a.glb"]


def test_a_lod_set_is_replaced_whole_or_not_at_all(tmp_path):
    """A GLB and its LODs are written to scratch files and renamed together: an interrupt
    while writing (here a destination that turned out to be a folder, checked first)
    leaves the previous set as it was, and scratch files a killed run left are removed."""
    previous = {tmp_path / name: b"old " + name.encode() for name in ("a.glb", "a_LOD0.glb", "a_LOD1.glb")}
    write_set_atomically(previous)
    (tmp_path / ".a_LOD1.glb.0123456789ab.partial").write_bytes(b"left by a killed run")
    (tmp_path / "a_LOD2.glb").mkdir()
    with pytest.raises(ValueError, match="a_LOD2.glb is a folder"):
        write_set_atomically({**{path: b"new" for path in previous}, tmp_path / "a_LOD2.glb": b"new"})
    assert {path: path.read_bytes() for path in previous} == previous
    (tmp_path / "a_LOD2.glb").rmdir()
    write_set_atomically({path: b"new" for path in previous})
    assert files_under(tmp_path) == ["a.glb", "a_LOD0.glb", "a_LOD1.glb"]
    assert all(path.read_bytes() == b"new" for path in previous)


def test_views_of_an_existing_cli_case_still_write_nothing_on_a_missing_input(tmp_path, capsys):
    code, err = run_cli(["views", str(tmp_path / "nope.png"), "-o", str(tmp_path / "views")], capsys)
    assert_one_line_error(code, err, "nope.png: no such file")
    assert files_under(tmp_path) == []


PLY_HEADER = (b"ply\nformat ascii 1.0\nelement vertex %d\nproperty float x\nproperty float y\nproperty float z\n"
              b"element face %d\nproperty list uchar int vertex_indices\nend_header\n")
ONE_TRIANGLE = b"0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"


@pytest.mark.parametrize("declared, needle", [
    ((3, 5_000_000), "the header declares 3 vertices and 5000000 faces; the file holds 3 and 1"),
    ((9, 1), "the header declares 9 vertices and 1 faces"),
])
def test_a_ply_header_that_declares_more_than_the_file_holds_is_refused(declared, needle):
    with pytest.raises(ValueError) as refused:
        load_blockout(PLY_HEADER % declared + ONE_TRIANGLE, "ply", name="blockout.ply")
    assert str(refused.value).startswith("blockout.ply: ") and needle in str(refused.value)
    assert len(load_blockout(PLY_HEADER % (3, 1) + ONE_TRIANGLE, "ply", name="honest.ply").faces) == 1


def test_a_mesh_over_the_byte_limit_is_refused_unread(tmp_path):
    path = tmp_path / "big.obj"
    path.write_bytes(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n" + b"# padding\n" * 100)
    with pytest.raises(ValueError, match=r"big.obj: 1,032 bytes; a blockout may have at most 1,000"):
        load_blockout(path, max_bytes=1000)
    with pytest.raises(ValueError, match=r"upload.obj: 1,032 bytes; a blockout may have at most 1,000"):
        load_blockout(path.read_bytes(), "obj", name="upload.obj", max_bytes=1000)


def test_flows_refuse_a_mesh_or_manifest_over_its_setting_before_reading_it(tmp_path, monkeypatch):
    """The request's asset id hashes the input file, so the limit holds there already,
    from the file's size alone, naming the setting that raises it."""
    from flows.batch import batch_text_to_3d
    from flows.tasks import read_user_file

    (tmp_path / "big.obj").write_bytes(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n" * 40)
    (tmp_path / "rows.csv").write_text("prompt\n" + "a chest\n" * 40)
    monkeypatch.setenv("TEXT_TO_3D_MAX_MESH_BYTES", "1000")
    monkeypatch.setenv("TEXT_TO_3D_MAX_MANIFEST_BYTES", "100")
    monkeypatch.setenv("TEXT_TO_3D_STORE", str(tmp_path / "store"))
    with pytest.raises(ValueError, match=r"big.obj: 1,280 bytes, over the limit of 1,000 \(setting TEXT_TO_3D_MAX_MESH"):
        read_user_file(str(tmp_path / "big.obj"))
    with pytest.raises(ValueError, match=r"rows.csv: 327 bytes, over the limit of 100 \(setting TEXT_TO_3D_MAX_MANIFEST"):
        batch_text_to_3d.fn(str(tmp_path / "rows.csv"))
    assert files_under(tmp_path) == ["big.obj", "rows.csv"]


def test_degenerate_duplicate_and_non_manifold_faces_are_removed_with_a_warning(caplog):
    """A small fin on a box's edge (three faces at one edge), a face on one vertex twice
    and a face given twice: each goes (at the edge, the smallest face), and the warning
    names what went."""
    import numpy as np
    import trimesh

    box = trimesh.creation.box()
    edge = box.edges_unique[0]
    vertices = np.vstack([box.vertices, [box.vertices[edge].mean(axis=0) * 1.1]])
    faces = np.vstack([box.faces, [[edge[0], edge[1], 8]], [[0, 0, 1]], box.faces[:1]])
    data = trimesh.Trimesh(vertices, faces, process=False).export(file_type="obj").encode()
    with caplog.at_level("WARNING"):
        mesh = load_blockout(data, "obj", name="fin.obj")
    assert mesh.metadata["repairs"] == {"degenerate faces": 1, "duplicate faces": 1, "faces on non-manifold edges": 1}
    assert len(mesh.faces) == 12 and mesh.is_watertight
    assert "fin.obj: repaired the blockout, removing 1 degenerate faces, 1 duplicate faces, " \
           "1 faces on non-manifold edges" in caplog.text
    clean = load_blockout(box.export(file_type="obj").encode(), "obj", name="box.obj")
    assert clean.metadata["repairs"] == {} and len(clean.faces) == 12
