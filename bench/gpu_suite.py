"""The GPU benchmark of issue 18: one command, one JSON file, within 8 minutes on one H100/H200.

    bench/gpu_suite.sh                   # on the GPU machine: installs the carried wheels, runs this
    bench/gpu_suite.sh --smoke           # anywhere: tiny models on the CPU, every section end to end
    python bench/gpu_suite.py --out FILE [--device cuda] [--dtype bfloat16] [--budget-seconds 420]

Sections, in this order. Each runs in its own try: an error is recorded as a string and the
next section runs. The JSON is rewritten after every row, so a run cut short keeps what it
measured.

1. ``peak_matmul``: the device's bf16 matrix-product rate, the peak every ``fraction_of_peak``
   divides by.
2. ``zero123pp``: Zero123++ at full size, eager: 28 and 75 steps, batch 1 and 4, to PIL grids.
3. ``sdxl``: SDXL base at 1024 px, 30 steps, guidance on. 4. ``sam``: SAM ViT-H, one image.
5. ``reconstruction``: a rendered six-view grid to a mesh, on the CPU and, where recon can
   use one, on CUDA; GLB export and validation timed apart.
6. ``chain``: the stages as the flows call them (prompt to image, cutout, six views,
   reconstruction with export and validation), every model loaded through the model cache
   with ``memory_policy=auto`` and a 16 GiB budget: a cold run, then warm runs, with each
   stage's peak memory.
7. ``zero123pp_compile``: the same Zero123++ rows with a ``torch.compile``-d UNet, as many as
   the time left allows; each new shape's compilation is recorded apart.

Full-size models have random weights, built on the device; random weights do the real
arithmetic, so the timings are the real models' timings. FLOPs are counted by FlopCounterMode
on each row's warm-up run (``bench/measure.py``). Content matters only where noted: a
random-weight SDXL draws noise and a random-weight Zero123++ draws views of no object, so the
chain cuts out the built-in sample object (at the image stage's output size) and reconstructs
a grid rendered from the built-in sample blockout (``--mesh`` for another).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.measure import (  # noqa: E402
    peak_matmul_tflops,
    peak_memory_gib,
    peak_reserved_gib,
    reset_peak_memory,
    synchronize,
)

PROMPT = "a brass lantern"
ROW_MODELS = ("zero123plus-v1.2", "sdxl-base", "sam-vit-huge")
PACKAGES = ("diffusers", "transformers", "accelerate", "huggingface_hub", "tokenizers", "safetensors", "numpy",
            "scipy", "scikit-image", "pillow", "onnxruntime", "pydantic", "pydantic-settings", "trimesh",
            "open3d-cpu", "open3d", "pymeshlab", "xatlas", "triton")
TARGETS = {"zero123pp_28_steps_s": 0.6, "sdxl_30_steps_s": 1.2, "warm_text_to_glb_s": 5.0, "chain_peak_gib": 16.0}


@dataclass(frozen=True)
class Plan:
    """Sizes and counts of one run: the issue's at full size, or a tiny smoke run."""

    zero123pp_steps: tuple[int, ...] = (28, 75)
    zero123pp_batches: tuple[int, ...] = (1, 4)
    zero123pp_width: int = 640
    zero123pp_height: int = 960
    sdxl_steps: int = 30
    sdxl_size: int = 1024
    repeats: int = 3
    matmul_sizes: tuple[int, ...] = (4096, 8192, 16384)
    matmul_seconds: float = 1.0
    views_steps: int = 28
    chain_warm_runs: int = 2
    target_faces: int = 20000
    texture_size: int = 1024
    lods: int = 3
    recon_warmup: bool = True
    compile_min_seconds: float = 120.0
    """Time left below which no new compilation starts (a UNet compiles in a minute or two)."""


FULL = Plan()
SMOKE = replace(FULL, zero123pp_steps=(1, 2), zero123pp_batches=(1, 2), zero123pp_width=64,
                zero123pp_height=96, sdxl_steps=2, sdxl_size=64, repeats=1, matmul_sizes=(256, 512),
                matmul_seconds=0.2, views_steps=1, chain_warm_runs=1, target_faces=2000, texture_size=256,
                lods=1, recon_warmup=False, compile_min_seconds=20.0)


class Suite:
    """The run's options, clock, checkpoints and report; writes the JSON after every row."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke: bool = args.smoke
        self.plan = SMOKE if args.smoke else FULL
        self.device = torch.device(args.device)
        self.dtype: torch.dtype = getattr(torch, args.dtype)
        self.started = time.perf_counter()
        self.deadline = self.started + args.budget_seconds
        self.out: Path = args.out
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu-suite-", dir=args.scratch))
        self.checkpoints: dict[str, Path] = {}
        self.report: dict[str, Any] = {
            "suite": "bench/gpu_suite.py", "smoke": self.smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "budget_seconds": args.budget_seconds, "plan": asdict(self.plan), "environment": environment(self),
            "sections": {},
        }

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - self.started:6.1f}s] {message}", flush=True)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def write(self) -> None:
        """Replace the JSON file whole (a reader never sees half a file)."""
        self.report["elapsed_seconds"] = round(time.perf_counter() - self.started, 1)
        self.report["targets"] = targets(self.report["sections"], self.smoke)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.out.with_name(self.out.name + ".partial")
        partial.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        os.replace(partial, self.out)

    def section(self, name: str, run: Callable[["Suite", dict], None]) -> None:
        """Run one section into its own result dict; an error is recorded and the run goes on."""
        result: dict[str, Any] = {}
        self.report["sections"][name] = result
        self.log(f"{name}: start ({self.left():.0f} s of the budget left)")
        started = time.perf_counter()
        try:
            run(self, result)
        except Exception as error:  # noqa: BLE001 - one section's failure must not stop the others
            result["error"] = f"{type(error).__name__}: {error}"
            self.log(f"{name}: ERROR {result['error']}")
            traceback.print_exc()
        finally:
            result["section_seconds"] = round(time.perf_counter() - started, 1)
            release_memory()
            self.write()
        self.log(f"{name}: done in {result['section_seconds']} s")

    def row(self, rows: list, label: str, measure_row: Callable[[], dict]) -> dict | None:
        """Append one measured row (or its error) to ``rows`` and write the JSON."""
        self.log(f"  {label} ...")
        try:
            row = measure_row()
        except Exception as error:  # noqa: BLE001 - the next row may still fit
            row = {"label": label, "error": f"{type(error).__name__}: {error}"}
            self.log(f"  {label}: ERROR {row['error']}")
            traceback.print_exc()
            rows.append(row)
            release_memory()
            self.write()
            return None
        row = {"label": label, **row}
        rows.append(row)
        self.log(f"  {label}: {row.get('seconds')} s, {row.get('achieved_tflops')} TFLOP/s, "
                 f"peak {row.get('peak_memory_gib')} GiB")
        self.write()
        return row

    # ---------------------------------------------------------------- models

    def build(self, name: str) -> Any:
        """A row's model on the device: built at full size with random weights, or in a smoke
        run the tiny checkpoint loaded through the product's loader."""
        if self.smoke:
            from stages.model_cache import SamBundle, load_model, place
            from stages.registry import model_spec, resolve

            model = load_model(resolve(model_spec(name, self.settings()), download=False), self.dtype)
            place(model, self.device)
            return model.model if isinstance(model, SamBundle) else model
        if name == "sdxl-base":
            from bench.front_stages import build_sdxl

            return build_sdxl(self.dtype, self.device)
        if name == "sam-vit-huge":
            from bench.front_stages import build_sam

            return build_sam(self.dtype, self.device)
        from zero123pp.checkpoints import build_pipeline

        pipeline = build_pipeline("full", device=self.device).to(dtype=self.dtype)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def keep_checkpoint(self, name: str, model: Any, result: dict) -> None:
        """Save a built full-size model in its published layout for the chain to load."""
        if name in self.checkpoints:
            return
        started = time.perf_counter()
        folder = self.scratch / "checkpoints" / name
        if name == "zero123plus-v1.2":
            from zero123pp.checkpoints import save_checkpoint

            save_checkpoint(model, folder)
        elif name == "sam-vit-huge":
            from transformers import SamImageProcessorPil

            model.save_pretrained(folder)
            SamImageProcessorPil().save_pretrained(folder)  # the published 1024 px preprocessing
        else:
            model.save_pretrained(folder, safe_serialization=True)
        self.checkpoints[name] = folder
        result["checkpoint_write_seconds"] = round(time.perf_counter() - started, 1)

    def write_tiny_checkpoints(self) -> None:
        """Smoke runs: tiny checkpoints in the published layouts (a second or two)."""
        from stages.tiny_models import write_tiny_sam, write_tiny_sdxl
        from zero123pp.checkpoints import build_pipeline, save_checkpoint

        folder = self.scratch / "checkpoints"
        self.checkpoints = {
            "sdxl-base": write_tiny_sdxl(folder / "sdxl-base"),
            "sam-vit-huge": write_tiny_sam(folder / "sam-vit-huge"),
            "zero123plus-v1.2": save_checkpoint(build_pipeline("tiny", seed=12), folder / "zero123plus-v1.2"),
        }

    def settings(self) -> Any:
        """Product settings pointing the registry at this run's checkpoints and u2netp."""
        from stages.settings import Settings

        return Settings(
            device=str(self.device), dtype=self.args.dtype, memory_policy="auto",
            max_resident_bytes=int(self.args.chain_budget_gib * 2**30),
            model_cache_dir=self.args.u2netp.parent if self.args.u2netp else self.scratch,
            models={name: {"source": str(path), "variant": ""} for name, path in self.checkpoints.items()},
        )


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(suite: Suite) -> dict:
    """What ran: device, versions, the source the wheelhouse was made from."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.node(),
        "device": str(suite.device), "dtype": suite.args.dtype,
    }
    if suite.device.type == "cuda":
        properties = torch.cuda.get_device_properties(suite.device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    multiprocessors=properties.multi_processor_count,
                    capability=f"{properties.major}.{properties.minor}",
                    cudnn=torch.backends.cudnn.version())
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    info["packages"] = packages
    source = REPO / ".whl" / "SOURCE"
    info["source"] = source.read_text().strip() if source.is_file() else None
    return info


# ------------------------------------------------------------------ sections

def peak_matmul(suite: Suite, result: dict) -> None:
    dtype = torch.bfloat16 if suite.device.type == "cuda" else suite.dtype
    result.update(peak_matmul_tflops(suite.device, dtype, suite.plan.matmul_sizes, suite.plan.matmul_seconds))
    suite.log(f"  peak {result['tflops']} TFLOP/s ({result['dtype']}, {result['best_size']}^2)")


def zero123pp_rows(suite: Suite, result: dict) -> None:
    from bench.zero123pp import zero123pp_row
    from stages.sample_input import draw_sample_object

    plan = suite.plan
    started = time.perf_counter()
    pipe = suite.build("zero123plus-v1.2")
    result.update(model="Zero123++ v1.2 architecture, random weights", size=f"{plan.zero123pp_width}x"
                  f"{plan.zero123pp_height}", build_seconds=round(time.perf_counter() - started, 1), rows=[])
    image = draw_sample_object(320)
    for batch in plan.zero123pp_batches:
        for steps in plan.zero123pp_steps:
            suite.row(result["rows"], f"eager {steps} steps batch {batch}", lambda: with_fraction(suite, zero123pp_row(
                pipe, image, steps, batch, plan.zero123pp_width, plan.zero123pp_height, suite.device,
                plan.repeats, output_type="pil")))
    if not suite.smoke:
        suite.keep_checkpoint("zero123plus-v1.2", pipe, result)


def sdxl_rows(suite: Suite, result: dict) -> None:
    from bench.front_stages import sdxl_row

    started = time.perf_counter()
    pipeline = suite.build("sdxl-base")
    pipeline.set_progress_bar_config(disable=True)
    result.update(model="SDXL base 1.0 architecture, random weights", build_seconds=round(
        time.perf_counter() - started, 1), rows=[])
    plan = suite.plan
    suite.row(result["rows"], f"eager {plan.sdxl_steps} steps {plan.sdxl_size} px", lambda: with_fraction(
        suite, sdxl_row(pipeline, suite.device, plan.sdxl_steps, plan.sdxl_size, plan.repeats)))
    if not suite.smoke:
        suite.keep_checkpoint("sdxl-base", pipeline, result)


def sam_rows(suite: Suite, result: dict) -> None:
    from bench.front_stages import sam_row

    started = time.perf_counter()
    model = suite.build("sam-vit-huge")
    result.update(model="SAM ViT-H architecture, random weights", build_seconds=round(
        time.perf_counter() - started, 1), rows=[])
    suite.row(result["rows"], "image encoder and mask decoder, one box",
              lambda: with_fraction(suite, sam_row(model, suite.device, max(suite.plan.repeats, 5))))
    if not suite.smoke:
        suite.keep_checkpoint("sam-vit-huge", model, result)


def with_fraction(suite: Suite, row: dict) -> dict:
    """Add the row's share of the peak matrix-product rate measured in this run."""
    peak = suite.report["sections"].get("peak_matmul", {}).get("tflops")
    if peak:
        row["fraction_of_peak"] = round(row["achieved_tflops"] / peak, 4)
    return row


def recon_unavailable() -> str | None:
    """Why reconstruction cannot run here (its libraries missing), or None."""
    try:
        for module in ("bench.recon_quality", "stages.reconstruct"):  # open3d, pymeshlab, xatlas, trimesh
            importlib.import_module(module)
    except (ImportError, OSError) as error:  # OSError: a native library of open3d missing
        return f"skipped: reconstruction cannot be imported here ({type(error).__name__}: {error})"
    return None


def recon_cuda_unavailable(suite: Suite) -> str | None:
    """Why reconstruction cannot run on CUDA here, or None."""
    from stages.reconstruct import reconstruct_views

    if "device" not in inspect.signature(reconstruct_views).parameters:
        return "skipped: reconstruct_views has no device option; every recon step runs on the CPU"
    if suite.device.type != "cuda":
        return "skipped: no CUDA device in this run"
    return None


def rendered_grid(suite: Suite) -> Path:
    """The sample blockout's (or ``--mesh``'s) v1.2 six-view grid, rendered once per run."""
    import numpy as np

    from bench.recon_quality import load_ground_truth, render_grid
    from stages.sample_input import draw_sample_blockout

    grid = suite.scratch / "rendered_grid.png"
    if not grid.is_file():
        mesh_path = suite.args.mesh
        if mesh_path is None:
            mesh_path = suite.scratch / "sample_blockout.ply"
            draw_sample_blockout().export(mesh_path)
        render_grid(load_ground_truth(mesh_path), "perfect", np.random.default_rng(0)).save(grid)
    return grid


def reconstruct_grid(suite: Suite, grid: Path, device: torch.device | None, folder: Path) -> dict:
    """Reconstruct, export the LOD GLBs and validate them, each timed; peak GPU memory."""
    from stages.reconstruct import export_asset, reconstruct_views, validate_exports

    options = {"device": str(device)} if device is not None else {}
    memory_device = device or torch.device("cpu")
    reset_peak_memory(memory_device)
    started = time.perf_counter()
    asset = reconstruct_views(grid, "v1.2", target_faces=suite.plan.target_faces,
                              texture_size=suite.plan.texture_size, **options)
    synchronize(memory_device)
    reconstructed = time.perf_counter()
    paths = export_asset(asset, folder / "asset.glb", lods=suite.plan.lods)
    exported = time.perf_counter()
    validation = validate_exports(paths)
    validated = time.perf_counter()
    return {"reconstruct_seconds": round(reconstructed - started, 3),
            "export_seconds": round(exported - reconstructed, 3),
            "validate_seconds": round(validated - exported, 3),
            "seconds": round(validated - started, 3), "faces": int(len(asset.faces)), "validation": validation,
            "peak_memory_gib": peak_memory_gib(memory_device)}


def reconstruction(suite: Suite, result: dict) -> None:
    reason = recon_unavailable()
    if reason:
        result.update(cpu=reason, cuda=reason)
        return
    started = time.perf_counter()
    grid = rendered_grid(suite)
    result.update(grid="v1.2 six-view grid of " + (str(suite.args.mesh) if suite.args.mesh else "the sample blockout"),
                  render_seconds=round(time.perf_counter() - started, 2), target_faces=suite.plan.target_faces,
                  texture_size=suite.plan.texture_size, lods=suite.plan.lods)
    runs: list[tuple[str, torch.device | None]] = [("cpu", None)]
    cuda_reason = recon_cuda_unavailable(suite)
    if cuda_reason:
        result["cuda"] = cuda_reason
    else:
        runs.append(("cuda", suite.device))
    for name, device in runs:
        folder = suite.scratch / f"recon-{name}"
        first = reconstruct_grid(suite, grid, device, folder / "first") if suite.plan.recon_warmup else None
        result[name] = reconstruct_grid(suite, grid, device, folder / "warm")
        if first:  # the first call pays for lazy imports and first allocations
            result[name]["first_call_seconds"] = first["seconds"]
        suite.log(f"  {name}: {result[name]['seconds']} s (reconstruct {result[name]['reconstruct_seconds']} s)")
        suite.write()


def chain(suite: Suite, result: dict) -> None:
    """The stage chain through the model cache, cold then warm, with each stage's peak memory."""
    from stages.cutout import cut_out
    from stages.model_cache import get_model, model_cache
    from stages.sample_input import draw_sample_object
    from stages.six_views import generate_six_views
    from stages.text_to_image import text_to_image

    if suite.args.u2netp is None:
        raise FileNotFoundError("no u2netp.onnx: pass --u2netp (bench/gpu_wheelhouse.sh puts one in .whl/)")
    for name in ROW_MODELS:  # models whose row section failed before saving them
        if name not in suite.checkpoints:
            suite.log(f"  building {name} for the chain")
            model = suite.build(name)
            suite.keep_checkpoint(name, model, result.setdefault("rebuilt", {}))
            del model
            release_memory()
    settings = suite.settings()
    plan = suite.plan
    recon_reason = recon_unavailable()
    grid = None if recon_reason else rendered_grid(suite)
    sample = draw_sample_object(plan.sdxl_size)
    events = CacheEvents()
    result.update(memory_policy=settings.memory_policy, budget_gib=suite.args.chain_budget_gib,
                  inputs="cutout: the sample object at the image stage's size; reconstruction: a rendered grid",
                  baseline_allocated_gib=round(torch.cuda.memory_allocated(suite.device) / 2**30, 3)
                  if suite.device.type == "cuda" else None)

    def run_once(folder: Path) -> dict:
        stages: dict[str, Any] = {}

        def stage(name: str, work: Callable[[], Any]) -> Any:
            reset_peak_memory(suite.device)
            synchronize(suite.device)
            started = time.perf_counter()
            output = work()
            synchronize(suite.device)
            stages[name] = {"seconds": round(time.perf_counter() - started, 3),
                            "peak_memory_gib": peak_memory_gib(suite.device),
                            "peak_reserved_gib": peak_reserved_gib(suite.device)}
            return output

        stage("text_to_image", lambda: text_to_image(PROMPT, get_model("sdxl-base", settings), seeds=0,
                                                     steps=plan.sdxl_steps, size=plan.sdxl_size))
        cutout = stage("cutout", lambda: cut_out(sample, get_model("u2netp", settings).model,
                                                 get_model("sam-vit-huge", settings).model, segmenter="sam"))
        stage("six_views", lambda: generate_six_views(cutout.reframed, get_model("zero123plus-v1.2", settings).model,
                                                      num_inference_steps=plan.views_steps))
        if grid is None:
            stages["reconstruct"] = recon_reason
        else:
            stage("reconstruct", lambda: reconstruct_grid(suite, grid, None, folder))
        timed = [s for s in stages.values() if isinstance(s, dict)]
        return {"stages": stages, "seconds": round(sum(s["seconds"] for s in timed), 3), "complete": grid is not None,
                **{key: largest(s[key] for s in timed) for key in ("peak_memory_gib", "peak_reserved_gib")}}

    try:
        with events:
            suite.log("  cold run (loads every model from disk)")
            result["cold"] = run_once(suite.scratch / "chain-cold")
            suite.write()
            result["warm"] = []
            for index in range(plan.chain_warm_runs):
                result["warm"].append(run_once(suite.scratch / f"chain-warm-{index}"))
                suite.log(f"  warm run {index + 1}: {result['warm'][-1]['seconds']} s")
                suite.write()
        runs = [result["cold"], *result["warm"]]
        result.update(resident_models=model_cache(settings).names,
                      warm_seconds=min(run["seconds"] for run in result["warm"]) if result["warm"] else None,
                      **{key: largest(run[key] for run in runs) for key in ("peak_memory_gib", "peak_reserved_gib")})
    finally:
        result["cache_events"] = events.messages
        model_cache(settings).clear()


def largest(values: Any) -> float | None:
    """The largest of the values that were measured (None on CPU)."""
    measured = [value for value in values if value is not None]
    return max(measured) if measured else None


class CacheEvents(logging.Handler):
    """Collects the model cache's eviction and offload messages while the chain runs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.logger = logging.getLogger("stages.model_cache")

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "CacheEvents":
        self.previous_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.previous_level)


def zero123pp_compile(suite: Suite, result: dict) -> None:
    """Compiled-UNet rows while time allows; FLOPs from the eager rows of the same shape."""
    from bench.zero123pp import zero123pp_row
    from stages.sample_input import draw_sample_object

    plan = suite.plan
    eager = {(row["steps"], row["inputs"]): row for row in suite.report["sections"].get("zero123pp", {}).get("rows", [])
             if "error" not in row}
    result.update(mode=suite.args.compile_mode, backend=suite.args.compile_backend, dynamic=False, rows=[],
                  skipped=[])
    if not eager:
        raise RuntimeError("no eager Zero123++ rows to take the FLOP counts from")
    if suite.left() < plan.compile_min_seconds:
        result["skipped"].append(f"everything: {suite.left():.0f} s left, a compilation needs about "
                                 f"{plan.compile_min_seconds:.0f}")
        return
    pipe = suite.build("zero123plus-v1.2")
    pipe.unet.compile(mode=suite.args.compile_mode, backend=suite.args.compile_backend, dynamic=False)
    image = draw_sample_object(320)
    needed = plan.compile_min_seconds
    for batch in plan.zero123pp_batches:
        if suite.left() < needed:
            result["skipped"].append(f"batch {batch}: {suite.left():.0f} s left, its compilation needs about "
                                     f"{needed:.0f}")
            continue
        for index, steps in enumerate(plan.zero123pp_steps):
            reference = eager.get((steps, batch))
            if reference is None:
                result["skipped"].append(f"{steps} steps batch {batch}: no eager row")
                continue
            row = suite.row(result["rows"], f"compiled {steps} steps batch {batch}", lambda: with_fraction(
                suite, zero123pp_row(pipe, image, steps, batch, plan.zero123pp_width, plan.zero123pp_height,
                                     suite.device, plan.repeats, output_type="pil",
                                     flops=reference["tflop"] * 1e12)))
            if row is not None and index == 0:  # a new shape: this call compiled
                row["compile_seconds"] = round(row["first_call_seconds"] - reference["seconds"], 1)
                needed = max(plan.compile_min_seconds, 1.5 * row["compile_seconds"])
                suite.write()


SECTIONS: dict[str, Callable[[Suite, dict], None]] = {
    "peak_matmul": peak_matmul,
    "zero123pp": zero123pp_rows,
    "sdxl": sdxl_rows,
    "sam": sam_rows,
    "reconstruction": reconstruction,
    "chain": chain,
    "zero123pp_compile": zero123pp_compile,
}


# -------------------------------------------------------------------- targets

def targets(sections: dict, smoke: bool) -> dict:
    """The issue's GPU targets against what this run measured (None where it did not; a
    smoke run's tiny models on a CPU meet or miss nothing)."""

    def rows(name: str) -> list[dict]:
        return [row for row in sections.get(name, {}).get("rows", []) if "error" not in row]

    def check(target: float, measured: float | None, **extra: Any) -> dict:
        return {"target_at_most": target, "measured": measured,
                "met": None if measured is None or smoke else measured <= target, **extra}

    zero123pp = {("compiled" if "compile" in name else "eager"): row["seconds"]
                 for name in ("zero123pp", "zero123pp_compile") for row in rows(name)
                 if row["steps"] == 28 and row["inputs"] == 1}
    sdxl = [row["seconds"] for row in rows("sdxl") if row["steps"] == 30 and row["size"] == "1024x1024"]
    chain = sections.get("chain", {})
    warm = chain.get("warm") or []
    complete = bool(warm) and all(run["complete"] for run in warm)
    return {
        "zero123pp_28_steps_batch_1_s": check(TARGETS["zero123pp_28_steps_s"], min(zero123pp.values(), default=None),
                                              **zero123pp),
        "sdxl_30_steps_1024_s": check(TARGETS["sdxl_30_steps_s"], min(sdxl, default=None)),
        "warm_text_to_validated_glb_s": check(TARGETS["warm_text_to_glb_s"],
                                              chain.get("warm_seconds") if complete else None,
                                              **({} if complete or not warm else {
                                                  "without_reconstruction": chain.get("warm_seconds")})),
        "chain_peak_memory_gib": check(TARGETS["chain_peak_gib"], chain.get("peak_memory_gib")),
    }


# ----------------------------------------------------------------------- main

def default_out() -> Path:
    folder = os.environ.get("OUT")
    return Path(folder) / "gpu_suite.json" if folder else REPO / "out" / "bench" / "gpu_suite.json"


def default_u2netp() -> Path | None:
    """The carried copy (.whl/), ../shared's, or the model cache's."""
    from stages.settings import Settings

    for candidate in (REPO / ".whl" / "u2netp.onnx", REPO.parent / "shared" / "data" / "u2netp.onnx",
                      Settings.model_fields["model_cache_dir"].default / "u2netp.onnx"):
        if candidate.is_file():
            return candidate
    return None


def default_scratch() -> str | None:
    """RAM-backed /dev/shm when it can hold the full-size checkpoints (about 12 GiB), else the temp folder."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 32 * 2**30 else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_out(), help="JSON file (default: $OUT/gpu_suite.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny models, few steps: proves the script runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="no compilation starts unless this leaves room for it (default 420 s)")
    parser.add_argument("--chain-budget-gib", type=float, default=16.0,
                        help="the model cache's resident budget in the chain (memory_policy=auto)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for the UNet")
    parser.add_argument("--compile-backend", default=None,
                        help="default inductor; smoke: aot_eager (inductor's C++ build takes minutes on a CPU)")
    parser.add_argument("--u2netp", type=Path, default=None, help="u2netp.onnx (default: .whl/, ../shared)")
    parser.add_argument("--mesh", type=Path, default=None, help="mesh to render the reconstruction grid from")
    parser.add_argument("--scratch", default=None, help="folder for checkpoints and outputs (default /dev/shm)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections only")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.budget_seconds = args.budget_seconds or (400.0 if args.smoke else 420.0)
    args.compile_backend = args.compile_backend or ("aot_eager" if args.smoke else "inductor")
    args.u2netp = args.u2netp or default_u2netp()
    args.scratch = args.scratch or default_scratch()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    suite = Suite(args)

    def stop(signum: int, frame: Any) -> None:
        """SIGTERM (the wrapper's time limit): record it and exit at once. Not an exception:
        library code on the way up may catch everything and carry on."""
        suite.report["interrupted"] = f"signal {signum} after {time.perf_counter() - suite.started:.0f} s"
        suite.log(f"interrupted: {suite.report['interrupted']}")
        suite.write()
        shutil.rmtree(suite.scratch, ignore_errors=True)
        os._exit(3)

    signal.signal(signal.SIGTERM, stop)
    suite.log(f"device {suite.report['environment'].get('gpu', args.device)}, {args.dtype}, "
              f"{'smoke' if args.smoke else 'full'} plan; writing {args.out}; scratch {suite.scratch}")
    try:
        suite.write()
        if args.smoke:
            suite.write_tiny_checkpoints()
        for name, run in SECTIONS.items():
            if args.only and name not in args.only:
                continue
            suite.section(name, run)
    except KeyboardInterrupt:
        suite.report["interrupted"] = f"KeyboardInterrupt after {time.perf_counter() - suite.started:.0f} s"
        suite.log(f"interrupted: {suite.report['interrupted']}")
    finally:
        suite.report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        suite.write()
        shutil.rmtree(suite.scratch, ignore_errors=True)
    suite.log(f"wrote {args.out}")
    print(json.dumps(suite.report["targets"], indent=2))


if __name__ == "__main__":
    main()
