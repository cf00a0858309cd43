"""Benchmark the StyleGAN2 generator forward pass: time per image and peak memory, optionally against the
official NVlabs stylegan2-ada-pytorch implementation.

Every case runs in fresh child processes of this script. A timing child warms up, then times both
implementations in alternating repeats, so that a slow phase of the machine hits both alike. A memory child
per implementation runs a single forward pass and records how far the peak memory rises above the memory in
use right before it.

    python bench/generator.py                                  # ours, on CPU (and CUDA when available)
    python bench/generator.py --official /tmp/sg2ada           # side by side with the official code

`--official` takes a work tree of https://github.com/NVlabs/stylegan2-ada-pytorch; see bench/README.md.
"""

import argparse
import copy
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `python bench/generator.py` puts only bench/ on the path.

from stylegan2 import Generator  # noqa: E402
from stylegan2.configs import FFHQ_1024  # noqa: E402

# Generator configurations, as keyword arguments of the official Generator constructor. ffhq1024 is the
# architecture of the official FFHQ 1024x1024 network pickle.
CONFIGS = {
    "tiny": dict(
        z_dim=64,
        c_dim=0,
        w_dim=128,
        img_resolution=32,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=2048, channel_max=128, num_fp16_res=4, conv_clamp=256),
    ),
    "ffhq1024": FFHQ_1024,
}
IMPLEMENTATIONS = ("ours", "official")
DEVICES = ("cpu", "cuda")

WEIGHT_SEED = 0
LATENT_SEED = 1
# The constructor sets biases to 0 or 1 and noise strengths to 0. Random offsets of this size on every
# 0-d and 1-d parameter make the bias and noise paths count in the comparison with the official outputs.
PARAMETER_JITTER = 0.1
WARMUP_PASSES = 2
# A timed repeat loops over forward passes until it lasts at least this long, so that millisecond-scale
# passes of the tiny configuration are not dominated by timer and scheduler noise.
MIN_REPEAT_SECONDS = 0.2
# Largest max abs difference from the official fp32 output that counts as a match; the same bound as in
# tests/test_equivalence.py.
DIFF_TOLERANCE = 1e-4
MIB = 2**20
KIB = 2**10
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
# Writing "5" to /proc/self/clear_refs resets the peak RSS (VmHWM) of the process to its current RSS
# (Linux 4.0 and later, see proc(5)).
RESET_PEAK_RSS = "5"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Time the generator forward pass per image and measure its peak memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=sorted(CONFIGS),
        default=list(CONFIGS),
        help="generator configurations",
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4], help="batch sizes")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help=f"timed repeats per implementation, after {WARMUP_PASSES} warm-up passes",
    )
    parser.add_argument(
        "--device",
        nargs="+",
        choices=DEVICES,
        default=None,
        help="devices to run on (default: cpu, plus cuda when torch.cuda.is_available())",
    )
    parser.add_argument(
        "--official",
        type=Path,
        default=None,
        metavar="PATH",
        help="work tree of NVlabs/stylegan2-ada-pytorch; adds its Generator to every case and checks that "
        "its fp32 output matches ours",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads in every child process (default: torch's own default)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON task of a child process
    args = parser.parse_args(argv)

    if args.worker is not None:
        return args
    if args.device is None:
        args.device = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    if "cuda" in args.device and not torch.cuda.is_available():
        parser.error("--device cuda was requested, but torch.cuda.is_available() is False")
    if min(args.batches) < 1:
        parser.error(f"--batches must be positive, got {args.batches}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.official is not None:
        args.official = args.official.resolve()
        if not (args.official / "training" / "networks.py").is_file():
            parser.error(
                f"--official {args.official}: training/networks.py not found; pass the root of a "
                "stylegan2-ada-pytorch work tree (see bench/README.md)"
            )
    return args


# ---------------------------------------------------------------------------------------------------------
# Models and forward passes (run inside the child processes).


def import_official_generator(official_root):
    """Import and return training.networks.Generator from a stylegan2-ada-pytorch work tree.

    Its custom CUDA kernels (bias_act, upfirdn2d) are switched off, so it always runs its reference PyTorch
    ops: on CPU it uses those anyway, and on CUDA a kernel build would need a matching toolkit and minutes.
    """
    sys.path.insert(0, str(official_root))  # Its modules import each other as top-level dnnlib, torch_utils.
    # torch_utils.custom_ops imports torch.utils.cpp_extension, which logs a warning when no CUDA toolkit is
    # found; nothing is compiled here, so the warning does not apply.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    from torch_utils.ops import bias_act, upfirdn2d
    from training import networks

    for ops_module in (bias_act, upfirdn2d):
        ops_module._init = lambda: False  # _init() builds and loads the CUDA plugin; False selects "ref".
    return networks.Generator


def write_weights(config, path):
    """Build our generator for `config` with seeded random weights and save its state_dict to `path`."""
    torch.manual_seed(WEIGHT_SEED)
    G = Generator(**copy.deepcopy(CONFIGS[config]))
    with torch.no_grad():
        for parameter in G.parameters():
            if parameter.ndim <= 1:
                parameter.add_(torch.randn_like(parameter) * PARAMETER_JITTER)
    torch.save(G.state_dict(), path)


def build_generator(implementation, task):
    """Build the generator of `implementation` for the task's config and load the shared weights file."""
    if implementation == "ours":
        generator_class = Generator
    else:
        generator_class = import_official_generator(task["official"])
    G = generator_class(**copy.deepcopy(CONFIGS[task["config"]]))

    # mmap=True reads the weights straight from the file: no temporary copy stays behind in the heap for the
    # forward pass to reuse, which would hide part of its memory.
    state_dict = torch.load(task["weights"], mmap=True, weights_only=True)
    G.load_state_dict(state_dict)
    del state_dict
    gc.collect()
    return G.eval().requires_grad_(False).to(task["device"])


def forward_kwargs(implementation, device, check):
    """Return the extra keyword arguments of the generator call.

    Both implementations flag the same high-resolution blocks for fp16. Ours computes them in fp16 only on
    CUDA, the official code on every device, so on CPU it gets force_fp32=True to run the same fp32
    arithmetic as ours. The output check uses force_fp32=True for both everywhere.
    """
    if check or (implementation == "official" and device.type == "cpu"):
        return dict(force_fp32=True)
    return {}


def make_latents(task, device):
    """Return the seeded input z [batch, z_dim] of the task."""
    rng = torch.Generator().manual_seed(LATENT_SEED)
    z_dim = CONFIGS[task["config"]]["z_dim"]
    return torch.randn([task["batch"], z_dim], generator=rng).to(device)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_passes(G, z, kwargs, passes, device):
    """Return the wall-clock seconds of `passes` forward passes."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(passes):
        G(z, None, noise_mode="const", **kwargs)
    synchronize(device)
    return time.perf_counter() - start


def max_abs_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def check_against_official(generators, z, device):
    """Return the max abs difference between our and the official fp32 outputs for the input z."""
    # TF32 (cuDNN's default for convolutions) keeps 10 mantissa bits, far too few for the tolerance.
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        images = []
        for name, G in generators:
            images.append(G(z, None, noise_mode="const", **forward_kwargs(name, device, check=True)))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return max_abs_diff(*images)


def run_timing(task):
    """Time each implementation of the task; return ms per image of every repeat, and the output check."""
    device = torch.device(task["device"])
    generators = [(name, build_generator(name, task)) for name in task["implementations"]]
    z = make_latents(task, device)
    batch = task["batch"]
    result = {"ms_per_image": {}, "passes_per_repeat": {}}

    with torch.no_grad():
        # Warm-up: the first pass includes one-time work (oneDNN kernel selection, CUDA context, caches), so
        # the number of passes per repeat is sized on the last warm-up pass.
        passes = {}
        for name, G in generators:
            for _ in range(WARMUP_PASSES):
                seconds = time_passes(G, z, forward_kwargs(name, device, check=False), 1, device)
            passes[name] = max(1, math.ceil(MIN_REPEAT_SECONDS / seconds))
            result["ms_per_image"][name] = []
        result["passes_per_repeat"] = passes

        for _ in range(task["repeats"]):
            for name, G in generators:
                seconds = time_passes(G, z, forward_kwargs(name, device, check=False), passes[name], device)
                result["ms_per_image"][name].append(1000 * seconds / (passes[name] * batch))

        if len(generators) == 2:
            result["max_abs_diff"] = check_against_official(generators, z, device)
    return result


def read_proc_status_bytes(field):
    """Return a memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * KIB  # The kernel writes these fields in kB (KiB).
    raise RuntimeError(f"{field} not found in {PROC_STATUS}")


def reset_peak_rss():
    """Reset the peak RSS of this process to its current RSS; return False where the kernel rejects it."""
    try:
        PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)
    except OSError:
        return False
    return True


def measure_cuda_peak(G, z, kwargs, device):
    """Return (allocated MiB before, peak increase in MiB) of the CUDA allocator over one forward pass."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    G(z, None, noise_mode="const", **kwargs)
    synchronize(device)
    return before / MIB, (torch.cuda.max_memory_allocated(device) - before) / MIB


def measure_rss_peak(G, z, kwargs):
    """Return (RSS MiB before, peak RSS increase in MiB, whether the increase is only a lower bound)."""
    before = read_proc_status_bytes("VmRSS")
    if reset_peak_rss():
        G(z, None, noise_mode="const", **kwargs)
        return before / MIB, (read_proc_status_bytes("VmHWM") - before) / MIB, False

    # Without the reset, the peak may still be the one reached while building and loading the generator,
    # which makes the increase a lower bound.
    import resource

    G(z, None, noise_mode="const", **kwargs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB  # ru_maxrss is in KiB on Linux.
    return before / MIB, (peak - before) / MIB, True


def run_memory(task):
    """Run one forward pass in this fresh process; return the memory in use before it and its increase."""
    device = torch.device(task["device"])
    implementation = task["implementations"][0]
    G = build_generator(implementation, task)
    z = make_latents(task, device)
    kwargs = forward_kwargs(implementation, device, check=False)
    gc.collect()

    result = {"before_mib": None, "peak_mib": None, "lower_bound": False}
    with torch.no_grad():
        if device.type == "cuda":
            result["before_mib"], result["peak_mib"] = measure_cuda_peak(G, z, kwargs, device)
        elif PROC_STATUS.is_file():
            result["before_mib"], result["peak_mib"], result["lower_bound"] = measure_rss_peak(G, z, kwargs)
        # NOTE: elsewhere (no /proc, e.g. macOS) the CPU memory is not measured and the table shows n/a.
    return result


def run_worker(task):
    """Run one child task (kind "timing" or "memory") and return its result."""
    torch.set_num_threads(task["threads"])
    torch.manual_seed(WEIGHT_SEED)
    if task["kind"] == "timing":
        result = run_timing(task)
    else:
        result = run_memory(task)
    result["threads"] = torch.get_num_threads()
    return result


# ---------------------------------------------------------------------------------------------------------
# Parent process: run every case in child processes and print the table.


def spawn(task):
    """Run `task` in a fresh Python process running this script and return its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(task)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{task['kind']} child for {'+'.join(task['implementations'])}, {task['config']}, batch "
            f"{task['batch']}, {task['device']} failed with exit code {completed.returncode}:\n"
            f"{completed.stderr[-4000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_case(args, config, batch, device, weights):
    """Time and measure one configuration, batch size and device; return a table row."""
    implementations = ["ours", "official"] if args.official else ["ours"]
    task = dict(
        config=config,
        batch=batch,
        device=device,
        repeats=args.repeats,
        threads=args.threads,
        weights=str(weights),
        official=str(args.official) if args.official else None,
        implementations=implementations,
    )
    timing = spawn(dict(task, kind="timing"))
    memory = {name: spawn(dict(task, kind="memory", implementations=[name])) for name in implementations}
    return dict(config=config, batch=batch, device=device, timing=timing, memory=memory)


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def format_time(times):
    """Format ms-per-image repeats as "median (min-max)"."""
    return f"{statistics.median(times):.1f} ({min(times):.1f}-{max(times):.1f})"


def format_mib(memory):
    if memory["peak_mib"] is None:
        return "n/a"
    mark = "*" if memory["lower_bound"] else ""
    return f"{memory['peak_mib']:.0f}{mark}"


def table_columns(with_official):
    """Return the (title, width) of every column of the table."""
    columns = [("config", 9), ("batch", 5), ("device", 6), ("ours ms/img (min-max)", 28)]
    if with_official:
        columns += [("official ms/img (min-max)", 28), ("off./ours", 9)]
    columns += [("ours peak MiB", 13)]
    if with_official:
        columns += [("official peak MiB", 17), ("max abs diff", 12)]
    else:
        columns += [("RSS/alloc before MiB", 20)]
    return columns


def format_row(row, with_official):
    """Return the table cells of one case, in the order of table_columns()."""
    times = row["timing"]["ms_per_image"]
    cells = [row["config"], str(row["batch"]), row["device"], format_time(times["ours"])]
    if with_official:
        ratio = statistics.median(times["official"]) / statistics.median(times["ours"])
        cells += [format_time(times["official"]), f"{ratio:.2f}"]
    cells += [format_mib(row["memory"]["ours"])]
    if with_official:
        cells += [format_mib(row["memory"]["official"]), f"{row['timing']['max_abs_diff']:.2e}"]
    else:
        before = row["memory"]["ours"]["before_mib"]
        cells += ["n/a" if before is None else f"{before:.0f}"]
    return cells


def print_cells(cells, columns):
    print("  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, columns)), flush=True)


def print_header(args, threads):
    print(f"torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch threads: {threads}")
    if hasattr(os, "getloadavg"):
        # Other processes on the machine slow every repeat they overlap; a load above 0 shows them.
        print(f"load average over the last minute, before the first case: {os.getloadavg()[0]:.2f}")
    if "cuda" in args.device:
        print(f"CUDA: {torch.cuda.get_device_name()}")
    if args.official:
        print(f"official: training.networks.Generator from {args.official}, reference PyTorch ops")
    print(
        f"{args.repeats} timed repeats per implementation after {WARMUP_PASSES} warm-up passes; "
        'torch.no_grad(), eval(), noise_mode="const"\n'
    )


NOTES = """
ms/img: median (min-max) over the repeats of wall time per image; with --official, one child process
  alternates the two implementations repeat by repeat.
peak MiB: extra memory of one forward pass, run first thing in a fresh child process. CPU: peak RSS
  (VmHWM, reset right before the pass) minus the RSS right before it, which already holds the weights,
  the input and torch itself. CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() before
  the pass."""
LOWER_BOUND_NOTE = "  *: a lower bound (ru_maxrss minus the RSS before), because the peak RSS could not be reset."
OFFICIAL_NOTES = f"""\
off./ours: official median / ours median; above 1 means ours is faster. On CPU the official generator
  runs with force_fp32=True, because unlike ours it would otherwise compute the fp16-flagged blocks in
  fp16 on the CPU; on CUDA both compute those blocks in fp16.
max abs diff: ours vs official output, both with force_fp32=True (TF32 off); tolerance {DIFF_TOLERANCE:g}."""


def print_notes(args, rows):
    print(NOTES)
    if any(memory["lower_bound"] for row in rows for memory in row["memory"].values()):
        print(LOWER_BOUND_NOTE)
    if args.official:
        print(OFFICIAL_NOTES)


def main(argv=None):
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0

    args.threads = args.threads or torch.get_num_threads()
    print_header(args, args.threads)
    columns = table_columns(bool(args.official))
    print_cells([title for title, _ in columns], columns)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-generator-") as tmp:
        for config in args.configs:
            weights = Path(tmp) / f"{config}.pt"
            write_weights(config, weights)
            for device in args.device:
                for batch in args.batches:
                    row = run_case(args, config, batch, device, weights)
                    rows.append(row)
                    print_cells(format_row(row, bool(args.official)), columns)
    print_notes(args, rows)

    mismatches = [row for row in rows if row["timing"].get("max_abs_diff", 0) > DIFF_TOLERANCE]
    for row in mismatches:
        print(
            f"MISMATCH: {row['config']} batch {row['batch']} on {row['device']}: max abs diff "
            f"{row['timing']['max_abs_diff']:.3e} exceeds the tolerance {DIFF_TOLERANCE:g}"
        )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
