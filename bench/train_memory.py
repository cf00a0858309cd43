"""Count the memory of one domain-adaptation training step (utils.trainer.Trainer.train_step) without a GPU.

The step renders a batch with the frozen source generator and with the trainable copy, embeds both with
CLIP ViT-B/32 and ViT-B/16, and backpropagates the directional loss into the trainable layers. This script
builds the FFHQ 1024 generator and both CLIP architectures on tensors that carry shapes and dtypes but no
data, runs the step's forward pass (and, for the generator alone, its backward pass), and counts:

- parameters and buffers of the source generator, the trainable copy and the CLIP models;
- gradients and Adam state (exp_avg, exp_avg_sq) of the trainable parameters;
- the tensors autograd saves for backward, counted once per storage by a saved_tensors_hooks pack hook;
- the peak of all tensors the step allocates (saved ones and transients), tracked per storage.

The step runs under FakeTensorMode. Its tensors are meta tensors (shape and dtype, no data) that claim a
device, so the code takes that device's path. On "cuda" that is the float16 synthesis blocks and CLIP
under float16 autocast, on "cpu" float32 everywhere. Nothing is computed, so 1024 px takes seconds on a CPU.

    python bench/train_memory.py                      # FFHQ 1024, batch 2, layers b64,b128,b256
    python bench/train_memory.py --resolution 256     # a quick run on a 256 px generator

See bench/README.md for what the figures include and what they leave out.
"""

import argparse
import contextlib
import dataclasses
import sys
import weakref
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `python bench/train_memory.py` puts only bench/ on the path.

from stylegan2 import Generator, synthesis  # noqa: E402
from stylegan2.configs import ffhq_kwargs  # noqa: E402
from utils import losses  # noqa: E402
from utils.clip_model import ClipGuide, build_clip, resolve_architecture  # noqa: E402
from utils.freeze import freeze_except  # noqa: E402
from utils.train_config import AdaptConfig  # noqa: E402

MIB = 2**20
GIB = 2**30
TARGET_GIB = 3.0  # a 6 GB GPU minus about 0.5 GB of CUDA context, with headroom
RESOLUTIONS = (256, 512, 1024)
POOLED_SIZE = 256  # side of the image that the "CLIP on a pooled image" option hands to the guide
SCALED_DOT_PRODUCT_ATTENTION = F.scaled_dot_product_attention  # the original, before any patch

# Saved-for-backward bytes of the official stylegan2-ada-pytorch generator at 1024 px, batch 2, with
# b64-b256 trainable, as reported to this project (not measured by this script).
OFFICIAL_SAVED_GIB = {"fp16": 2.7, "fp32": 5.0}


def generator_kwargs(resolution: int) -> dict:
    """Constructor arguments of the FFHQ generator architecture at `resolution` (1024 is the real one)."""
    return ffhq_kwargs(resolution)


@dataclasses.dataclass(frozen=True)
class StepSetup:
    """One way to run the training step: a table row."""

    label: str  # row name
    device: str  # "cpu" or "cuda": the device whose code path runs, emulated with FakeTensorMode
    clip_autocast: bool = True  # CLIP under float16 autocast, as the trainer enables on CUDA (amp=True)
    clip_half: bool = False  # CLIP weights stored in float16, as load_guide(half=True) loads them on CUDA
    checkpointing: bool = False  # recompute each synthesis block in backward (gradient_checkpointing)
    clip_input_size: int = 0  # > 0: average-pool the generated image to this side before the guide
    drop_text_towers: bool = False  # free the CLIP text towers once the text direction is computed
    change: str = ""  # what the code needs for this option; "" when today's code runs it


NO_TEXT_CHANGE = "free the CLIP text towers after compute_direction in utils.adapt.adapt"
CPU_SETUP = StepSetup("1 cpu fp32", "cpu", clip_autocast=False)
# The trainer's CUDA default: checkpointing (configs/domains.json) and fp16 CLIP weights (utils.adapt).
DEFAULT_CUDA_SETUP = StepSetup("3a = 3 + fp16 CLIP (default)", "cuda", checkpointing=True, clip_half=True)
# Numbered rows: the CPU path, CUDA without memory options and two options. Lettered rows: CLIP options,
# alone and with checkpointing. `change` names the code change that an option would need.
SETUPS = [
    CPU_SETUP,
    StepSetup("2 cuda, no options", "cuda"),
    StepSetup("3 = 2 + checkpointing", "cuda", checkpointing=True),
    StepSetup(
        "4 = 2 + CLIP on 256 px",
        "cuda",
        clip_input_size=POOLED_SIZE,
        change="avg-pool the image to 256 px before encode_images in utils.trainer",
    ),
    StepSetup("2a = 2 + fp16 CLIP", "cuda", clip_half=True),
    StepSetup("2b = 2 + no text towers", "cuda", drop_text_towers=True, change=NO_TEXT_CHANGE),
    StepSetup(
        "2c = 2a + 2b",
        "cuda",
        clip_half=True,
        drop_text_towers=True,
        change=NO_TEXT_CHANGE,
    ),
    DEFAULT_CUDA_SETUP,
    StepSetup(
        "3b = 3 + no text towers", "cuda", checkpointing=True, drop_text_towers=True, change=NO_TEXT_CHANGE
    ),
]


# ---------------------------------------------------------------------------------------------------------
# Devices without data.


@contextlib.contextmanager
def emulated_device(device_type: str):
    """Create tensors without memory: plain "meta" tensors, or fake tensors that claim "cpu" or "cuda".

    Fake tensors are meta tensors underneath, but code that checks the device type takes its CPU or CUDA
    path. For "cuda" two calls are patched for the duration: torch.cuda.is_available(), because
    autocast("cuda") switches itself off without a GPU (and autocast has no meta device type), and
    F.scaled_dot_product_attention, see efficient_attention.
    """
    if device_type == "meta":
        with torch.device("meta"):
            yield
        return
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'meta', 'cpu' or 'cuda', got {device_type!r}")
    with contextlib.ExitStack() as stack:
        stack.enter_context(FakeTensorMode())
        stack.enter_context(torch.device(device_type))
        if device_type == "cuda":
            stack.enter_context(mock.patch("torch.cuda.is_available", return_value=True))
            stack.enter_context(mock.patch.object(F, "scaled_dot_product_attention", efficient_attention))
        yield


def efficient_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """Run F.scaled_dot_product_attention through the memory-efficient CUDA kernel, as a GPU would.

    Without a GPU to query, the kernel choice for fake CUDA tensors falls back to the math backend, which
    saves float32 attention matrices. The fused kernels (flash, memory-efficient) save q, k, v, the output
    and the log-sum-exp instead. Calls with a mask, dropout or causal masking keep the original function.
    """
    if attn_mask is not None or dropout_p or is_causal or kwargs:
        return SCALED_DOT_PRODUCT_ATTENTION(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kwargs
        )
    outputs = torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, True, scale=scale)
    return outputs[0]


@contextlib.contextmanager
def fp16_blocks_on_meta():
    """Let the synthesis blocks flagged use_fp16 compute in float16 on meta, as they do on CUDA."""
    with mock.patch.object(synthesis, "FP16_DEVICE_TYPES", (*synthesis.FP16_DEVICE_TYPES, "meta")):
        yield


def cast_floating(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Replace the floating-point parameters and buffers of `module` by `dtype` copies.

    Module.half() cannot convert fake tensors (it swaps tensors that have weak references), so this
    replaces them one by one, with the same requires_grad.
    """
    for submodule in module.modules():
        for name, parameter in list(submodule._parameters.items()):
            if parameter is not None and parameter.is_floating_point():
                converted = parameter.detach().to(dtype)
                submodule._parameters[name] = torch.nn.Parameter(converted, requires_grad=parameter.requires_grad)
        for name, buffer in list(submodule._buffers.items()):
            if buffer is not None and buffer.is_floating_point():
                submodule._buffers[name] = buffer.to(dtype)


# ---------------------------------------------------------------------------------------------------------
# Counting storages.


def storage_bytes(tensors) -> int:
    """Sum the bytes of the distinct storages behind `tensors`."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[id(storage)] = storage.nbytes()
    return sum(storages.values())


def storage_ids(modules) -> set:
    """Return the ids of the storages of every parameter and buffer of `modules`."""
    return {
        id(tensor.untyped_storage())
        for module in modules
        for tensor in [*module.parameters(), *module.buffers()]
    }


@dataclasses.dataclass
class SavedStorage:
    """A storage that autograd keeps for backward."""

    nbytes: int
    dtype: torch.dtype
    shape: tuple  # shape of the first tensor saved from this storage
    section: str  # part of the step that saved it: "generator", "clip" or "block inputs"
    storage: torch.UntypedStorage  # kept so the storage, and with it its id, stays alive while counted


class SavedTensorCounter:
    """Records each storage that autograd saves for backward while the context is active, once.

    Tensors that share a storage (views, in-place results, an op's output saved again as the next op's
    input) are counted once, with the whole storage. Storages in `exclude` (parameters and buffers, which
    are counted elsewhere) are skipped. Tensors held by other references than autograd's saved variables
    are not seen; add() counts such tensors.
    """

    def __init__(self, exclude: set):
        self.exclude = set(exclude)
        self.storages = {}  # id(storage) -> SavedStorage
        self.section = "generator"
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        key = id(storage)
        if key not in self.exclude and key not in self.storages:
            shape = tuple(tensor.shape)
            self.storages[key] = SavedStorage(storage.nbytes(), tensor.dtype, shape, self.section, storage)
        return tensor

    @staticmethod
    def _unpack(tensor):
        return tensor

    def add(self, tensor, section: str) -> None:
        """Count `tensor` under `section`, moving it there if autograd already saved it elsewhere.

        For tensors that are held for backward by other references than autograd's saved variables.
        """
        key = id(tensor.untyped_storage())
        if key in self.exclude:
            return
        if key in self.storages:
            self.storages[key].section = section
            return
        self.section, previous = section, self.section
        self._pack(tensor)
        self.section = previous

    def total(self, section: str = None) -> int:
        return sum(item.nbytes for item in self.storages.values() if section in (None, item.section))

    def largest(self) -> SavedStorage:
        return max(self.storages.values(), key=lambda item: item.nbytes, default=None)

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._hooks.__exit__(*exc_info)


class LiveTensorTracker(TorchDispatchMode):
    """Tracks the bytes of the storages that ops create in this context while they are alive, and their peak.

    A storage is counted from the op that creates it until its last reference goes, as PyTorch frees it.
    Storages in `exclude` (parameters and buffers, whose views ops return) are not counted. Allocator
    rounding and the workspaces inside kernels (cuDNN, cuBLAS) are not modelled.
    """

    def __init__(self, exclude: set):
        super().__init__()
        self.exclude = set(exclude)
        self.live = 0
        self.peak = 0
        self._sizes = {}  # id(storage) -> bytes, for the live storages

    def _release(self, key):
        self.live -= self._sizes.pop(key)

    def _track(self, tensor):
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._sizes or key in self.exclude:
            return
        self._sizes[key] = storage.nbytes()
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for item in tree_flatten(result)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)
        return result


# ---------------------------------------------------------------------------------------------------------
# The step.


@dataclasses.dataclass
class Models:
    """The networks of one training step."""

    G_source: Generator
    G_train: Generator
    guide: ClipGuide
    trainable: list  # the trainable parameters of G_train


def build_models(setup: StepSetup, resolution: int, config: AdaptConfig) -> Models:
    """Build the generators and CLIP models of `setup` on the current (emulated) device, without data."""
    kwargs = generator_kwargs(resolution)
    G_source = Generator(**kwargs).eval().requires_grad_(False)
    # The trainer deep-copies G_source. A second instance has the same tensors, while a deep copy of fake
    # tensors would belong to another FakeTensorMode.
    G_train = Generator(**kwargs)
    G_train.synthesis.gradient_checkpointing = setup.checkpointing
    enabled = freeze_except(G_train, config.layers)
    G_train.synthesis.train()  # as Trainer.train(): the unfused modulated convolution
    parameters = dict(G_train.named_parameters())

    models = [build_clip(resolve_architecture(name)) for name in config.clip_models]
    if setup.clip_half:
        for model in models:
            cast_floating(model, torch.float16)
    guide = ClipGuide(models, weights=config.clip_model_weights, autocast=setup.clip_autocast)
    return Models(G_source, G_train, guide, [parameters[name] for name in enabled])


def clip_input(img: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool `img` to `size` pixels per side when size > 0 and smaller than the image."""
    if size <= 0 or size >= img.shape[-1]:
        return img
    return F.avg_pool2d(img, kernel_size=img.shape[-1] // size)


def record_block_inputs(G: Generator, counter: SavedTensorCounter):
    """Count each synthesis block's inputs (x, img, ws), which a checkpointed block keeps for recomputation.

    torch 2.14's checkpoint stores them as saved variables, so the pack hook receives them too. The
    pre-hook moves them to "block inputs" and also counts them where a checkpoint keeps plain references.

    Returns the hook handles and a list that collects each block's input tensors in order.
    """
    inputs = []

    def pre_hook(block, args):
        tensors = [item for item in args if isinstance(item, torch.Tensor)]
        inputs.append((block, args))
        for tensor in tensors:
            counter.add(tensor, "block inputs")

    handles = [block.register_forward_pre_hook(pre_hook) for block in G.synthesis.blocks()]
    return handles, inputs


@dataclasses.dataclass
class StepCounts:
    """Bytes of one training step, by category."""

    params: dict  # group name -> bytes of parameters and buffers
    trainable: int  # number of trainable parameters (elements)
    grads: int
    adam: int
    saved: int  # peak of the saved-for-backward bytes over the step
    saved_generator: int  # generator part of `saved` at the end of the forward pass
    saved_clip: int  # CLIP, preprocessing and loss part at the end of the forward pass
    saved_block_inputs: int  # checkpointing only: the inputs kept by the checkpointed blocks
    recompute: int  # checkpointing only: bytes saved by the recomputed block at the backward peak
    largest_saved: SavedStorage
    forward_peak: int  # peak of the step's own tensors in the forward pass

    @property
    def total(self) -> int:
        return sum(self.params.values()) + self.grads + self.adam + self.saved


def module_tensors(module: torch.nn.Module) -> list:
    return [*module.parameters(), *module.buffers()]


def count_parameters(models: Models, setup: StepSetup) -> dict:
    """Sum the bytes of parameters and buffers per model group. Dropped text towers count 0."""
    clip_models = models.guide.models
    image = [tensor for model in clip_models for tensor in module_tensors(model.visual)]
    image_ids = {id(tensor) for tensor in image}
    text = [tensor for model in clip_models for tensor in module_tensors(model) if id(tensor) not in image_ids]
    groups = {
        "source generator": module_tensors(models.G_source),
        "trainable copy": module_tensors(models.G_train),
        "CLIP image towers": image,
        "CLIP text towers": [] if setup.drop_text_towers else text,
    }
    return {name: storage_bytes(tensors) for name, tensors in groups.items()}


def run_forward(models: Models, config: AdaptConfig, setup: StepSetup, batch: int, counter, tracker):
    """Run the forward pass of Trainer.train_step with its default loss (directional only).

    Returns the input arguments of each synthesis block when checkpointing, else an empty list.
    """
    G_source, G_train, guide = models.G_source, models.G_train, models.guide
    with tracker:
        z = torch.randn([batch, G_source.z_dim])
        with torch.no_grad():
            ws = G_source.mapping(z, None, truncation_psi=config.truncation_psi)
            source_image = G_source.synthesis(ws, noise_mode="const")
            source_embedding = guide.encode_images(clip_input(source_image, setup.clip_input_size))
            del source_image
        directions = [F.normalize(torch.randn(e.shape[-1]), dim=0) for e in source_embedding]

        handles, block_inputs = record_block_inputs(G_train, counter) if setup.checkpointing else ([], [])
        with counter:
            counter.section = "generator"
            adapted = G_train.synthesis(ws, noise_mode="const")
            counter.section = "clip"
            adapted_embedding = guide.encode_images(clip_input(adapted, setup.clip_input_size))
            loss = losses.sum_over_models(
                losses.directional_loss, guide.weights, adapted_embedding, source_embedding, directions
            )
        for handle in handles:
            handle.remove()
    # The graph stays alive through `loss`, and `adapted` as the trainer's local variable, until here.
    del loss, adapted
    return block_inputs


def measure_recompute(block_inputs, exclude: set) -> list:
    """Return, per checkpointed block, the bytes its recomputation in backward saves.

    Each block runs its forward pass again under the hooks with the inputs it received in the step, as
    torch.utils.checkpoint does during backward. The block inputs themselves are not counted here.
    """
    input_ids = {id(t.untyped_storage()) for _, args in block_inputs for t in args if isinstance(t, torch.Tensor)}
    saved = []
    for block, args in block_inputs:
        counter = SavedTensorCounter(exclude | input_ids)
        with counter, torch.enable_grad():
            block(*args, noise_mode="const")
        saved.append(counter.total())
    return saved


def recompute_peak(block_inputs, recomputed: list) -> tuple:
    """Return (bytes, index) of the largest saved total while one block recomputes in backward.

    Backward runs from the last block down. When block i recomputes, the inputs of blocks 0..i are still
    held, while those of later blocks were released with their backward.
    """
    best, where = 0, -1
    for index, saved in enumerate(recomputed):
        tensors = [t for _, args in block_inputs[: index + 1] for t in args if isinstance(t, torch.Tensor)]
        total = storage_bytes(tensors) + saved
        if total > best:
            best, where = total, index
    return best, where


def count_step(setup: StepSetup, resolution: int, batch: int, config: AdaptConfig) -> StepCounts:
    """Count the bytes of one training step of `setup`."""
    with emulated_device(setup.device):
        models = build_models(setup, resolution, config)
        params = count_parameters(models, setup)
        exclude = storage_ids([models.G_source, models.G_train, *models.guide.models])
        grads = storage_bytes(models.trainable)  # a gradient has the shape and dtype of its parameter
        counter = SavedTensorCounter(exclude)
        tracker = LiveTensorTracker(exclude)
        block_inputs = run_forward(models, config, setup, batch, counter, tracker)

        saved_end = counter.total()
        recompute, saved_in_backward = 0, 0
        if setup.checkpointing:
            recomputed = measure_recompute(block_inputs, exclude)
            saved_in_backward, index = recompute_peak(block_inputs, recomputed)
            recompute = recomputed[index]
    return StepCounts(
        params=params,
        trainable=sum(parameter.numel() for parameter in models.trainable),
        grads=grads,
        adam=2 * grads,  # exp_avg and exp_avg_sq, each like its parameter. Adam keeps `step` on the CPU.
        saved=max(saved_end, saved_in_backward),
        saved_generator=counter.total("generator"),
        saved_clip=counter.total("clip"),
        saved_block_inputs=counter.total("block inputs"),
        recompute=recompute,
        largest_saved=counter.largest(),
        forward_peak=tracker.peak,
    )


# ---------------------------------------------------------------------------------------------------------
# The generator alone, for comparison with the official implementation.


@dataclasses.dataclass
class GeneratorCounts:
    """Bytes of the trainable generator's own forward and backward pass."""

    saved: int  # saved for backward at the end of the forward pass
    forward_peak: int  # peak of its tensors in the forward pass (saved ones and transients)
    backward_peak: int  # peak of its tensors through forward and backward, parameter gradients included


def count_generator(resolution: int, batch: int, layers, fp16: bool, checkpointing: bool) -> GeneratorCounts:
    """Count the trainable generator alone through forward and backward.

    The float32 case runs on fake CPU tensors, the CPU path. The autograd engine cannot run backward on
    fake CUDA tensors without a GPU. So the float16 case runs on meta tensors, with the use_fp16 blocks
    switched to float16 there, and its forward pass saves the same tensors as the generator in the fake
    CUDA step. The backward pass starts from a full-size image gradient, as the guide's preprocessing returns.
    """
    with contextlib.ExitStack() as stack:
        if fp16:
            stack.enter_context(fp16_blocks_on_meta())
        stack.enter_context(emulated_device("meta" if fp16 else "cpu"))
        G = Generator(**generator_kwargs(resolution))
        freeze_except(G, layers)
        G.synthesis.train()
        G.synthesis.gradient_checkpointing = checkpointing
        ws = torch.randn([batch, G.num_ws, G.w_dim])
        exclude = storage_ids([G])
        counter = SavedTensorCounter(exclude)
        tracker = LiveTensorTracker(exclude)
        with tracker:
            with counter:
                img = G.synthesis(ws, noise_mode="const")
            forward_peak = tracker.peak
            img.backward(torch.empty_like(img))
            del img
    return GeneratorCounts(saved=counter.total(), forward_peak=forward_peak, backward_peak=tracker.peak)


# ---------------------------------------------------------------------------------------------------------
# Output.


def mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f}"


def gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.3f}"


def yes_no(condition: bool) -> str:
    return "yes" if condition else "no"


@dataclasses.dataclass
class Row:
    """The counts of one configuration."""

    setup: StepSetup
    counts: StepCounts
    peak: int  # peak estimate in bytes, see peak_estimate

    def meets(self, target: int) -> bool:
        return self.counts.total <= target

    def meets_with_peak(self, target: int) -> bool:
        return self.counts.total <= target and self.peak <= target


def peak_estimate(counts: StepCounts, generator: GeneratorCounts) -> int:
    """Estimate the step's peak: parameters + Adam + the larger of two phases.

    The phases are the forward pass (its peak plus the previous step's gradients) and the generator's
    backward pass (simulated, the new gradients included). The trainer frees the previous step's
    gradients (zero_grad) only after the forward pass. The CLIP backward pass is not simulated.
    """
    params = sum(counts.params.values())
    return params + counts.adam + max(counts.grads + counts.forward_peak, generator.backward_peak)


def format_cells(cells, widths) -> str:
    """Left-align the first cell and right-align the others, two spaces apart."""
    first = cells[0].ljust(widths[0])
    return "  ".join([first] + [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])])


def print_table(rows, unit: str) -> None:
    convert = mib if unit == "MiB" else gib
    target = TARGET_GIB * GIB
    widths = [24, 8, 7, 7, 8, 8, 9, 11]
    print(f"\nMemory of one training step, {unit}")
    header = ["configuration", "params", "grads", "Adam", "saved", "total", "peak est.", f"<= {TARGET_GIB:g} GiB"]
    print(format_cells(header, widths))
    for row in rows:
        counts = row.counts
        cells = [
            row.setup.label,
            convert(sum(counts.params.values())),
            convert(counts.grads),
            convert(counts.adam),
            convert(counts.saved),
            convert(counts.total),
            convert(row.peak),
            f"{yes_no(counts.total <= target)}/{yes_no(row.peak <= target)}",
        ]
        print(format_cells(cells, widths))


def print_breakdown(rows) -> None:
    print("\nSaved for backward by part at the end of the forward pass, the recomputed block at the backward "
          "peak, and the forward peak of live tensors, MiB")
    widths = [24, 9, 9, 10, 9, 8, 30]
    header = [
        "configuration", "generator", "CLIP+loss", "blk inputs", "recompute", "fwd peak", "largest saved tensor"
    ]
    print(format_cells(header, widths))
    for row in rows:
        counts = row.counts
        largest = counts.largest_saved
        dtype = str(largest.dtype).replace("torch.", "")
        cells = [
            row.setup.label,
            mib(counts.saved_generator),
            mib(counts.saved_clip),
            mib(counts.saved_block_inputs),
            mib(counts.recompute),
            mib(counts.forward_peak),
            f"{mib(largest.nbytes)} MiB {dtype} {list(largest.shape)}",
        ]
        print(format_cells(cells, widths))


def print_parameters(rows) -> None:
    print("\nParameters and buffers in MiB")
    printed = set()
    for row in rows:
        key = tuple(row.counts.params.items())
        if key in printed:
            continue
        printed.add(key)
        parts = ", ".join(f"{name} {mib(nbytes)}" for name, nbytes in row.counts.params.items())
        print(f"  {row.setup.label}: {parts}")


def print_generator_comparison(generator_counts: dict, resolution: int, batch: int, layers) -> None:
    print(f"\nThe trainable generator alone ({resolution} px, batch {batch}), GiB")
    widths = [9, 13, 7, 8, 8, 19]
    header = ["precision", "checkpointing", "saved", "fwd peak", "bwd peak", "official (reported)"]
    print(format_cells(header, widths))
    comparable = resolution == 1024 and batch == 2 and list(layers) == list(AdaptConfig().layers)
    for (precision, checkpointing), counts in generator_counts.items():
        official = OFFICIAL_SAVED_GIB[precision] if comparable and not checkpointing else None
        cells = [
            precision,
            yes_no(checkpointing),
            gib(counts.saved),
            gib(counts.forward_peak),
            gib(counts.backward_peak),
            f"{official:.1f} saved" if official is not None else "-",
        ]
        print(format_cells(cells, widths))
    print("fp32: fake CPU tensors. fp16: meta tensors with the use_fp16 blocks in float16, as on CUDA.")
    print("The official figures are stylegan2-ada-pytorch's saved bytes at 1024 px, batch 2, b64-b256 trainable, "
          "as reported to this project; this script did not measure them.")


def print_verdict(rows) -> None:
    target = TARGET_GIB * GIB
    default = next(row for row in rows if row.setup == DEFAULT_CUDA_SETUP)
    verdict = "meets" if default.meets(target) else "misses"
    print(f"\nThe CUDA default needs {gib(default.counts.total)} GiB (peak estimate {gib(default.peak)} GiB) and "
          f"{verdict} the {TARGET_GIB:g} GiB target.")
    if default.meets(target):
        return
    meeting = [row for row in rows if row.setup.device == "cuda" and row.meets(target)]
    if not meeting:
        print("No configuration in the table meets it.")
    for row in meeting:
        change = f"needs: {row.setup.change}" if row.setup.change else "a config option today"
        peak = "within" if row.meets_with_peak(target) else "over"
        print(f"  {row.setup.label}: total {gib(row.counts.total)} GiB, peak estimate {gib(row.peak)} GiB "
              f"({peak} the target); {change}")


def print_header(resolution: int, batch: int, config: AdaptConfig, trainable: int) -> None:
    print(f"torch {torch.__version__}; FFHQ generator architecture at {resolution} px; batch {batch}; "
          f"trainable layers {','.join(config.layers)}; CLIP {' + '.join(config.clip_models)}")
    print(f"trainable parameters: {trainable:,}")
    print("Fake tensors without data (FakeTensorMode). cuda rows: the fp16 synthesis blocks, and CLIP under fp16 "
          "autocast with its attention in the memory-efficient kernel, as on a GPU. cpu row: float32.")
    print("total = params + grads + Adam + saved; peak est. adds the forward transients and the generator's "
          "backward, simulated; the last column checks total/peak est.")


# ---------------------------------------------------------------------------------------------------------
# Command line.


def parse_layers(text: str) -> list:
    return [token for token in text.replace(",", " ").split() if token]


def check_layers(layers, resolution: int) -> None:
    """Raise ValueError, naming the valid layers, unless `layers` selects parameters of the generator."""
    with emulated_device("meta"):
        freeze_except(Generator(**generator_kwargs(resolution)), layers)


def build_parser() -> argparse.ArgumentParser:
    defaults = AdaptConfig()
    parser = argparse.ArgumentParser(
        prog="python bench/train_memory.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batch", type=int, default=defaults.batch, help="latents per step (default %(default)s)")
    parser.add_argument("--resolution", type=int, choices=RESOLUTIONS, default=1024,
                        help="generator resolution in pixels; 256 and 512 are quick runs (default %(default)s)")
    parser.add_argument("--layers", default=",".join(defaults.layers),
                        help="comma-separated trainable layers, as in utils.adapt --layers (default %(default)s)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be a positive integer, got {args.batch}")
    config = dataclasses.replace(AdaptConfig(), layers=parse_layers(args.layers), batch=args.batch)
    try:
        check_layers(config.layers, args.resolution)
    except ValueError as error:
        parser.error(str(error))

    rows = []
    generator_counts = {}
    for setup in SETUPS:
        counts = count_step(setup, args.resolution, args.batch, config)
        precision = "fp16" if setup.device == "cuda" else "fp32"
        key = (precision, setup.checkpointing)
        if key not in generator_counts:
            generator_counts[key] = count_generator(
                args.resolution, args.batch, config.layers, precision == "fp16", setup.checkpointing
            )
        rows.append(Row(setup, counts, peak_estimate(counts, generator_counts[key])))

    print_header(args.resolution, args.batch, config, rows[0].counts.trainable)
    print_table(rows, "MiB")
    print_table(rows, "GiB")
    print_breakdown(rows)
    print_parameters(rows)
    print_generator_comparison(generator_counts, args.resolution, args.batch, config.layers)
    print_verdict(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
