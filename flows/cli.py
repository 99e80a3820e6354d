"""The ``text-to-3d`` command line: one entry point for every stage and flow."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from flows.serve import WARM_MODES
from stages.bounds import (check_faces, check_height, check_image_size, check_lods, check_positive, check_steps,
                           check_texture_size)


def _settings(args: argparse.Namespace):
    """The settings with this command's runtime flags on top."""
    from stages.settings import load_settings

    return load_settings(
        device=getattr(args, "device", None), dtype=getattr(args, "dtype", None),
        memory_policy="offload" if getattr(args, "offload", False) else None,
    )


def _views(args: argparse.Namespace) -> None:
    from stages.image_input import open_image
    from stages.model_cache import get_model
    from stages.registry import registry
    from stages.image_output import check_output_place
    from stages.six_views import generate_six_views, load_six_view_pipeline, require_object

    if (args.controlnet is None) != (args.depth is None):
        raise ValueError("--controlnet and --depth go together: the depth grid steers the ControlNet")
    check_output_place(Path(args.output), folder=True)
    image = open_image(args.image)
    require_object(image)
    depth = open_image(args.depth) if args.depth else None
    settings = _settings(args)
    model = args.model or f"zero123plus-{args.version}"
    known = registry(settings)
    if model in known and (args.controlnet is None or args.controlnet in known):
        pipeline = get_model(model, settings, controlnet=args.controlnet).model
    else:
        pipeline = load_six_view_pipeline(
            known[model].source if model in known else model, controlnet=args.controlnet,
            device=args.device, dtype=args.dtype, offload=args.offload,
        )
    result = generate_six_views(
        image, pipeline, version=args.version, num_inference_steps=args.steps,
        guidance_scale=args.guidance, seed=args.seed, depth_grid=depth,
        controlnet_conditioning_scale=args.conditioning_scale,
    )
    for path in result.write_to(args.output):
        print(path)


def _image(args: argparse.Namespace) -> None:
    from stages.image_output import check_output_place, image_format, save_image, save_json
    from stages.model_cache import get_model
    from stages.bounds import prompt_words
    from stages.text_to_image import text_to_image

    prompt_words(args.prompt)
    image_format(Path(args.output))
    check_output_place(Path(args.output))
    settings = _settings(args)
    model = get_model(args.model, settings)
    refiner = get_model("sdxl-refiner", settings) if args.refiner else None
    [result] = text_to_image(
        args.prompt, model, seeds=args.seed, steps=args.steps, guidance=args.guidance, size=args.size, refiner=refiner
    )
    output = Path(args.output)
    save_image(result.image, output)
    save_json(result.metadata, output.with_suffix(".json"))
    print(output)


def _cutout(args: argparse.Namespace) -> None:
    from stages.cutout import cut_out
    from stages.image_input import open_image
    from stages.image_output import check_output_place, image_format, save_image
    from stages.model_cache import get_model

    for output, alpha in ((args.output, True), (args.reframed, False)):
        if output:
            image_format(Path(output), alpha=alpha)
            check_output_place(Path(output))
    image = open_image(args.image)
    settings = _settings(args)
    u2net = get_model("u2netp", settings).model
    sam = get_model(args.sam_model, settings).model if args.segmenter == "sam" else None
    result = cut_out(image, u2net, sam, segmenter=args.segmenter)
    save_image(result.cutout, Path(args.output))
    print(args.output)
    if args.reframed:
        save_image(result.reframed, Path(args.reframed))
        print(args.reframed)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside; for imports, whose objects all live on. torch,
    diffusers and open3d make some hundred thousand objects as they import, and every full
    collection walks them all again: 0.35 s of the reconstruction libraries' 2.5 s import
    and 0.6 of diffusers' and transformers' 2.8 s, measured."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _reconstruct(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from stages.image_output import check_output_place
    from stages.view_matting import open_views, to_rgba_views, view_matting_session

    if not args.output.lower().endswith(".glb"):
        raise ValueError(f"-o must name a .glb file, got {args.output}")
    check_output_place(Path(args.output))
    if args.export_nerfstudio:
        check_output_place(Path(args.export_nerfstudio), folder=True)
    views = open_views(args.views)
    u2net = None if args.colour_matte else view_matting_session(_settings(args))
    with ThreadPoolExecutor(max_workers=1) as pool:
        # u2netp (a quarter second a view) mats the views on the second core while torch
        # and the reconstruction libraries import (about two seconds)
        matting = pool.submit(to_rgba_views, views, u2net)
        with _collector_paused():
            from stages.reconstruct import export_asset, reconstruct_views

        matted = matting.result()
    asset = reconstruct_views(
        args.views, args.version, target_faces=args.target_faces, texture_size=args.texture_size,
        progress=lambda phase, seconds: print(f"{phase}: {seconds:.2f} s", file=sys.stderr),
        nerfstudio_dir=args.export_nerfstudio, normal_map=args.normal_map, delight=not args.keep_lighting,
        matted=matted,
    )
    paths = export_asset(asset, args.output, lods=args.lods, height=args.height)
    for path in paths:
        print(path)
    if args.previews:
        from recon.files import write_atomically
        from stages.image_output import save_image
        from stages.preview import load_asset_mesh, render_previews

        previews = render_previews(load_asset_mesh(paths[0]))
        stem = Path(args.output).with_suffix("")
        save_image(previews.contact_sheet, stem.with_name(stem.name + "_contact.png"))
        write_atomically(stem.with_name(stem.name + "_turntable.gif"), previews.turntable_gif)
        print(stem.with_name(stem.name + "_contact.png"))
        print(stem.with_name(stem.name + "_turntable.gif"))


def _package(args: argparse.Namespace) -> None:
    from stages.package import package_asset

    glb = Path(args.asset)
    if not glb.is_file():
        raise ValueError(f"{glb}: no such file")
    settings = _settings(args)
    result = package_asset(glb, args.output, engine=args.engine, collision=args.collision, compress=args.compress,
                           usdz=args.usdz, licences=_asset_licences(glb),
                           collision_threshold=settings.collision_threshold,
                           collision_max_hulls=settings.collision_max_hulls)
    for path in result.files.values():
        print(path)


def _asset_licences(glb: Path) -> dict | None:
    """The licence summary of the asset a GLB belongs to: from its manifest when the GLB
    lies in a store's asset folder (``{asset_id}/recon/asset.glb``), else ``None``."""
    manifest = glb.resolve().parent.parent / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("licences")
    return None


def _models_list(args: argparse.Namespace) -> None:
    from stages.registry import registry

    for spec in registry(_settings(args)).values():
        variant = f" variant={spec.variant}" if spec.variant else ""
        print(f"{spec.name:26} {spec.kind:12} {spec.source}@{spec.revision}{variant}  [{spec.licence}]")


def _models_check(args: argparse.Namespace) -> None:
    """Resolve (and load) each model without downloading; one line per model, failures named."""
    from stages.model_cache import get_model
    from stages.registry import model_spec, registry, resolve

    settings = _settings(args)
    failures = []
    for name in args.names or list(registry(settings)):
        try:
            resolved = resolve(model_spec(name, settings), download=False)
            if not args.no_load:
                get_model(name, settings)
            print(f"ok      {name}: {resolved.path} ({resolved.revision})")
        except Exception as error:  # report every model, whatever broke it
            failures.append(name)
            print(f"FAILED  {name}: {error}")
    if failures:
        raise ValueError(f"{len(failures)} model(s) not usable: {', '.join(failures)}")


def _models_fetch(args: argparse.Namespace) -> None:
    from stages.registry import fetch, model_spec

    settings = _settings(args)
    for name in args.names:
        resolved = fetch(model_spec(name, settings))
        print(f"{name}: {resolved.path} ({resolved.revision})")


def _models_make_tiny(args: argparse.Namespace) -> None:
    from stages.tiny_models import make_tiny_models

    settings_file = make_tiny_models(args.directory)
    print(settings_file)
    print(f"use them with: export TEXT_TO_3D_CONFIG={settings_file}")


def _run(args: argparse.Namespace) -> None:
    """Run one flow here (a local, ephemeral Prefect unless PREFECT_API_URL names a server)."""
    from pydantic import ValidationError

    from flows.requests import AssetOptions, validation_reasons

    if args.task_runner:
        os.environ["TEXT_TO_3D_TASK_RUNNER"] = args.task_runner  # flows build their runner on import
    if not args.verbose:  # Prefect logs a failed run's traceback; the error is reported here in one line
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_INTERNAL_LEVEL", "ERROR")  # "still processing items" at exit
    malformed = [option for option in args.option if "=" not in option]
    if malformed:
        raise ValueError(f"--option {malformed[0]!r}: write KEY=VALUE, for example texture_size=2048")
    options = dict(option.split("=", 1) for option in args.option)
    try:  # checked here, before any flow starts; batch defaults may also set a row's seed
        checked = AssetOptions(**{key: value for key, value in options.items() if key != "seed" or args.flow != "batch"})
    except ValidationError as error:
        raise ValueError(f"--option {validation_reasons(error)}") from None
    if args.flow == "batch":
        from flows.batch import batch_text_to_3d

        state = batch_text_to_3d(args.input, concurrency=args.concurrency, defaults=options, return_state=True)
        for row in state.result(raise_on_failure=False):
            print(json.dumps(row))
        if state.is_failed():
            raise ValueError(state.message)
        return
    common = dict(seed=args.seed, options=checked)
    if args.flow == "text":
        from flows.text_to_3d import text_to_3d

        text_to_3d(args.input, blockout=args.blockout, **common)
    elif args.flow == "image":
        from flows.image_to_3d import image_to_3d

        image_to_3d(args.input, blockout=args.blockout, **common)
    else:
        from flows.mesh_to_3d import mesh_to_3d

        mesh_to_3d(args.input, prompt=args.prompt, image=args.image, **common)


def _serve(args: argparse.Namespace) -> None:
    from flows.serve import serve

    sys.exit(serve(api_url=args.api_url, port=args.port, gpu_slots=args.gpus, config=os.environ.get("TEXT_TO_3D_CONFIG"),
                   warm=args.warm))


def _demo(args: argparse.Namespace) -> None:
    """Offline end-to-end run of the mesh-to-3d flow on tiny random models, a built-in photo
    and a built-in blockout, into a local store."""
    from stages.registry import fetch, model_spec
    from stages.sample_input import draw_sample_blockout, draw_sample_object
    from stages.settings import CONFIG_ENV, load_settings
    from stages.tiny_models import make_tiny_models

    out = Path(args.out).resolve()
    config = out / "models" / "models.toml"
    if not config.is_file():
        make_tiny_models(out / "models")
    os.environ[CONFIG_ENV] = str(config)
    os.environ.setdefault("TEXT_TO_3D_STORE", str(out / "assets"))
    shared_u2net = Path(__file__).resolve().parents[2] / "shared" / "data" / "u2netp.onnx"
    if shared_u2net.is_file():
        os.environ.setdefault("TEXT_TO_3D_MODELS__U2NETP__SOURCE", str(shared_u2net))
    else:
        fetch(model_spec("u2netp", load_settings()))
    draw_sample_object().save(out / "input.png")
    draw_sample_blockout().export(out / "blockout.glb")
    from flows.mesh_to_3d import mesh_to_3d
    from flows.requests import AssetOptions

    options = AssetOptions(segmenter="u2net", view_steps=args.steps, texture_size=512, preview_size=128)
    manifest = mesh_to_3d(str(out / "blockout.glb"), image=str(out / "input.png"), options=options)
    print(f"demo done: {manifest}\n(tiny random models draw noise-like views; the stages, files and lineage are real)")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (the usage block buried it)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bounded(kind: type, check: Callable) -> Callable[[str], object]:
    """An argparse type: ``kind`` of the text, within ``check``'s bounds (``stages.bounds``),
    so a bad value is refused while parsing, with the option's name, before any work."""
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'a whole' if kind is int else 'a'} number: {text!r}") from None
        try:
            return check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="text-to-3d", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--config", help="settings TOML file (sets TEXT_TO_3D_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)

    views = commands.add_parser("views", help="one object image -> Zero123++ six-view grid, tiles, cameras.json")
    views.add_argument("image", help="input image (RGBA cutout, or RGB object on a plain background)")
    views.add_argument("-o", "--output", required=True, help="output folder")
    views.add_argument("--version", choices=["v1.2", "v1.1"], default="v1.2")
    views.add_argument("--model", help="registry name, checkpoint folder or hub id (default: zero123plus-VERSION)")
    views.add_argument("--steps", type=_bounded(int, check_steps), default=28, help="denoising steps (75-100 for faces and fine detail)")
    views.add_argument("--guidance", type=float, default=4.0)
    views.add_argument("--seed", type=int, default=0)
    views.add_argument("--controlnet", help="depth ControlNet: registry name, folder or hub id (v1.1 only)")
    views.add_argument("--depth", help="depth condition grid PNG (same size as the output grid)")
    views.add_argument("--conditioning-scale", type=float, default=1.0)
    _add_runtime_options(views)
    views.set_defaults(handler=_views)

    rebuild = commands.add_parser("reconstruct", help="six views -> textured GLB with LODs")
    rebuild.add_argument("views", help="640x960 six-view grid image, or a folder with view_0.png .. view_5.png")
    rebuild.add_argument("-o", "--output", required=True, help="output .glb (LOD files are written beside it)")
    rebuild.add_argument("--version", choices=["v1.2", "v1.1"], default="v1.2", help="camera set of the views")
    rebuild.add_argument("--target-faces", type=_bounded(int, check_faces), default=20000)
    rebuild.add_argument("--texture-size", type=_bounded(int, check_texture_size), default=1024,
                         help="a power of two")
    rebuild.add_argument("--lods", type=_bounded(int, check_lods), default=3)
    rebuild.add_argument("--height", type=_bounded(float, check_height), default=1.0, help="asset height in metres")
    rebuild.add_argument("--normal-map", action="store_true",
                         help="also bake a tangent-space normal map from the dense surface")
    rebuild.add_argument("--keep-lighting", action="store_true",
                         help="keep the views' lighting in the base colour (default: estimated and divided out)")
    rebuild.add_argument("--colour-matte", action="store_true",
                         help="mat the views by background colour alone, without u2netp (used when fetched)")
    rebuild.add_argument("--export-nerfstudio", metavar="DIR", help="also write views, masks, transforms.json")
    rebuild.add_argument("--previews", action="store_true", help="also write OUT_contact.png and OUT_turntable.gif")
    rebuild.set_defaults(handler=_reconstruct)

    package = commands.add_parser("package", help="GLB -> engine delivery set: collision, compressed GLB, USDZ")
    package.add_argument("asset", help="a finished GLB (reconstructed or retextured)")
    package.add_argument("-o", "--output", required=True, help="output folder")
    package.add_argument("--engine", choices=["generic", "unreal", "unity", "godot"], default="generic",
                         help="naming of collision pieces and ORM texture (unreal)")
    package.add_argument("--collision", action="store_true", help="convex collision pieces (CoACD)")
    package.add_argument("--compress", action="store_true", help="also ASSET_compressed.glb: KTX2 textures, meshopt")
    package.add_argument("--usdz", action="store_true", help="also ASSET.usdz (UsdPreviewSurface, ARKit compliant)")
    package.set_defaults(handler=_package)

    image = commands.add_parser("image", help="prompt -> one centred object image (SDXL)")
    image.add_argument("prompt")
    image.add_argument("-o", "--output", required=True, help="output PNG (metadata is written beside it as .json)")
    image.add_argument("--model", default="sdxl-base", help="registry name: sdxl-base, sdxl-turbo, sdxl-lightning")
    image.add_argument("--refiner", action="store_true", help="finish with the SDXL refiner")
    image.add_argument("--seed", type=int, default=0)
    image.add_argument("--steps", type=_bounded(int, check_steps), help="default: the model's preset")
    image.add_argument("--guidance", type=float, help="default: the model's preset")
    image.add_argument("--size", type=_bounded(int, check_image_size), help="square side in pixels (default: the model's preset)")
    _add_runtime_options(image)
    image.set_defaults(handler=_image)

    cutout = commands.add_parser("cutout", help="image -> RGBA cutout of its object, optionally re-framed")
    cutout.add_argument("image")
    cutout.add_argument("-o", "--output", required=True, help="RGBA PNG at the input's size and position")
    cutout.add_argument("--segmenter", choices=["sam", "u2net"], default="sam")
    cutout.add_argument("--sam-model", default="sam-vit-huge", help="registry name of the SAM model")
    cutout.add_argument("--reframed", help="also write the square image for Zero123++ (object on grey)")
    _add_runtime_options(cutout)
    cutout.set_defaults(handler=_cutout)

    models = commands.add_parser("models", help="model registry").add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="every configured model").set_defaults(handler=_models_list)
    check = models.add_parser("check", help="check that models resolve locally and load")
    check.add_argument("names", nargs="*", help="registry names (default: all)")
    check.add_argument("--no-load", action="store_true", help="only find the files")
    _add_runtime_options(check)
    check.set_defaults(handler=_models_check)
    fetch = models.add_parser("fetch", help="download models into their caches")
    fetch.add_argument("names", nargs="+")
    fetch.set_defaults(handler=_models_fetch)
    make_tiny = models.add_parser("make-tiny", help="write tiny random checkpoints of every model and a models.toml")
    make_tiny.add_argument("directory")
    make_tiny.set_defaults(handler=_models_make_tiny)

    run = commands.add_parser("run", help="run a flow here: text, image, mesh (retexture) or batch")
    run.add_argument("flow", choices=["text", "image", "mesh", "batch"])
    run.add_argument("input", help="prompt, photo, blockout mesh or manifest (paths or s3:// URIs)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--blockout", help="text/image: mesh whose depth steers the views")
    run.add_argument("--prompt", help="mesh: what it should look like")
    run.add_argument("--image", help="mesh: or a reference photo")
    run.add_argument("--concurrency", type=_bounded(int, check_positive), default=4, help="batch: stage tasks at once")
    run.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="stage option, e.g. texture_size=2048 (repeatable; batch: defaults for rows)")
    run.add_argument("--task-runner", choices=["threads", "dask", "ray"], help="where stage tasks run")
    run.set_defaults(handler=_run)

    serve = commands.add_parser("serve", help="local Prefect server, work pool, deployments and a worker")
    serve.add_argument("--api-url", help="use this Prefect server instead of starting one")
    serve.add_argument("--port", type=int, default=4200)
    serve.add_argument("--gpus", type=_bounded(int, check_positive), help="GPU stages at once (default: CUDA devices, at least 1)")
    serve.add_argument("--warm", choices=WARM_MODES, default="resident",
                       help="resident (default): flow runs execute inside one long-lived worker process, so "
                            "models stay loaded between them; dask: a process per flow run, its stages on one "
                            "long-lived local Dask worker; off: everything in each flow run's own process")
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser("demo", help="offline mesh-to-3d flow on tiny models and built-in inputs")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--steps", type=_bounded(int, check_steps), default=4)
    demo.set_defaults(handler=_demo)
    return parser


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--offload", action="store_true", help="keep models in CPU memory between uses (CUDA)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The temporary server of an in-process run: no usage telemetry from a studio's machine
    # (its heartbeat also races the run for SQLite's write lock and logs tracebacks).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its first start creates and migrates the database: 20 s and more on a slow 2-core
    # machine, where Prefect's default wait of 20 s made `make run` fail on a fresh checkout.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose and args.command not in ("reconstruct", "package"):  # neither needs them: skip 2 s of imports
        with _collector_paused():
            import diffusers
            import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    if args.config:
        from stages.settings import CONFIG_ENV

        os.environ[CONFIG_ENV] = args.config
    try:
        args.handler(args)
    except KeyboardInterrupt:
        print(f"text-to-3d {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every failure is one line; -v shows the traceback of unexpected ones
        expected = isinstance(error, (ValueError, TypeError, RuntimeError, OSError))
        if args.verbose and not expected:
            raise
        print(f"text-to-3d {args.command}: error: {_one_line(error, expected)}", file=sys.stderr)
        return 2
    return 0


def console() -> int:
    """The ``text-to-3d`` executable: :func:`main` in a process that ends with the command."""
    code = main()
    # The libraries a command imported (torch, open3d, pymeshlab) hold some hundred thousand
    # objects that the interpreter's shutdown would walk in its last collections: 0.4 to 0.6 s
    # of a reconstruction's 10, measured. Frozen, they are simply left to the process's end.
    gc.freeze()
    return code


def _one_line(error: Exception, expected: bool) -> str:
    """The reason on one line: an OS error's file and cause, an unexpected error's type."""
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        text = str(error) or type(error).__name__
    if not expected:
        text = f"{type(error).__name__}: {text} (rerun with -v for the traceback)"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(console())
