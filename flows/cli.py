"""The ``text-to-3d`` command line: one entry point for every stage and flow."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _views(args: argparse.Namespace) -> None:
    from stages.image_input import open_image
    from stages.six_views import DEFAULT_MODELS, generate_six_views, load_six_view_pipeline

    if (args.controlnet is None) != (args.depth is None):
        raise ValueError("--controlnet and --depth go together: the depth grid steers the ControlNet")
    image = open_image(args.image)
    depth = open_image(args.depth) if args.depth else None
    pipeline = load_six_view_pipeline(
        args.model or DEFAULT_MODELS[args.version], controlnet=args.controlnet,
        device=args.device, dtype=args.dtype, offload=args.offload,
    )
    result = generate_six_views(
        image, pipeline, version=args.version, num_inference_steps=args.steps,
        guidance_scale=args.guidance, seed=args.seed, depth_grid=depth,
        controlnet_conditioning_scale=args.conditioning_scale,
    )
    for path in result.write_to(args.output):
        print(path)


def _reconstruct(args: argparse.Namespace) -> None:
    from stages.reconstruct import export_asset, reconstruct_views

    if not args.output.lower().endswith(".glb"):
        raise ValueError(f"-o must name a .glb file, got {args.output}")
    asset = reconstruct_views(
        args.views, args.version, target_faces=args.target_faces, texture_size=args.texture_size,
        progress=lambda phase, seconds: print(f"{phase}: {seconds:.2f} s", file=sys.stderr),
        nerfstudio_dir=args.export_nerfstudio,
    )
    for path in export_asset(asset, args.output, lods=args.lods, height=args.height):
        print(path)


def _models_make_tiny(args: argparse.Namespace) -> None:
    from zero123pp.checkpoints import make_tiny_checkpoints

    for name, path in make_tiny_checkpoints(args.directory).items():
        print(f"{name}: {path}")


def _demo(args: argparse.Namespace) -> None:
    """Offline end-to-end run on tiny random models and a built-in input image."""
    from stages.sample_input import draw_sample_object
    from stages.six_views import generate_six_views, load_six_view_pipeline
    from zero123pp.checkpoints import make_tiny_checkpoints

    out = Path(args.out)
    models = out / "models"
    if not (models / "zero123plus-v1.2" / "model_index.json").is_file():
        make_tiny_checkpoints(models)
    out.mkdir(parents=True, exist_ok=True)
    sample = draw_sample_object()
    sample.save(out / "input.png")
    pipeline = load_six_view_pipeline(models / "zero123plus-v1.2", device=args.device)
    result = generate_six_views(sample, pipeline, num_inference_steps=args.steps, seed=0)
    for path in result.write_to(out / "views"):
        print(path)
    print("demo done: tiny random models, so the views are noise-like; the pipeline and files are real")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="text-to-3d", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    views = commands.add_parser("views", help="one object image -> Zero123++ six-view grid, tiles, cameras.json")
    views.add_argument("image", help="input image (RGBA cutout, or RGB object on a plain background)")
    views.add_argument("-o", "--output", required=True, help="output folder")
    views.add_argument("--version", choices=["v1.2", "v1.1"], default="v1.2")
    views.add_argument("--model", help="checkpoint folder or hub id (default: the published model of --version)")
    views.add_argument("--steps", type=int, default=28, help="denoising steps (75-100 for faces and fine detail)")
    views.add_argument("--guidance", type=float, default=4.0)
    views.add_argument("--seed", type=int, default=0)
    views.add_argument("--controlnet", help="depth ControlNet folder or hub id (v1.1 only)")
    views.add_argument("--depth", help="depth condition grid PNG (same size as the output grid)")
    views.add_argument("--conditioning-scale", type=float, default=1.0)
    _add_runtime_options(views)
    views.set_defaults(handler=_views)

    rebuild = commands.add_parser("reconstruct", help="six views -> textured GLB with LODs")
    rebuild.add_argument("views", help="640x960 six-view grid image, or a folder with view_0.png .. view_5.png")
    rebuild.add_argument("-o", "--output", required=True, help="output .glb (LOD files are written beside it)")
    rebuild.add_argument("--version", choices=["v1.2", "v1.1"], default="v1.2", help="camera set of the views")
    rebuild.add_argument("--target-faces", type=int, default=20000)
    rebuild.add_argument("--texture-size", type=int, default=1024)
    rebuild.add_argument("--lods", type=int, default=3)
    rebuild.add_argument("--height", type=float, default=1.0, help="asset height in metres")
    rebuild.add_argument("--export-nerfstudio", metavar="DIR", help="also write views, masks, transforms.json")
    rebuild.set_defaults(handler=_reconstruct)

    models = commands.add_parser("models", help="model management").add_subparsers(dest="models_command", required=True)
    make_tiny = models.add_parser("make-tiny", help="write tiny random checkpoints in the published layouts")
    make_tiny.add_argument("directory")
    make_tiny.set_defaults(handler=_models_make_tiny)

    demo = commands.add_parser("demo", help="offline smoke run on tiny models and a built-in image")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--steps", type=int, default=28)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(handler=_demo)
    return parser


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--offload", action="store_true", help="keep models in CPU memory between uses (CUDA)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.handler(args)
    except (ValueError, TypeError) as error:
        print(f"text-to-3d {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
