"""Pure-PyTorch operators of the StyleGAN2 synthesis network.

The official stylegan2-ada-pytorch code ships custom CUDA kernels for these operators with a reference
PyTorch fallback. Everything here is plain PyTorch, so it runs unchanged on CPU, CUDA and MPS, and follows
the reference semantics closely enough to match the official fp32 outputs to about 1e-6 (see
tests/test_equivalence.py).
"""

import math

import torch
import torch.nn.functional as F

# Slope of the leaky ReLU and the gain that restores unit variance after it (StyleGAN2, Karras et al. 2020).
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2)

# Added under the square roots of the 2nd-moment normalisation and of demodulation to avoid 1/0.
EPSILON = 1e-8

ACTIVATIONS = ("linear", "lrelu")

# Smallest input map (H * W) of a CPU float32 convolution that runs in channels-last memory order.
# Timed with torch 2.14 on a 2-core AMD EPYC, one F.conv2d call each: 3x3 convolutions with 512 channels
# are faster in NCHW from 4x4 to 16x16, and both orders take about the same time at 32x32 and 64x64.
# Channels-last is 1.4x faster at 128x128 and 2x at 1024x1024, where the depthwise FIR filter gets 3x
# faster. Small maps in NCHW also keep the fp32 4x4 block of the fp16 test configurations bit-identical
# to the official result, which test_fp16_blocks_follow_official_fp16 relies on.
CHANNELS_LAST_MIN_PIXELS = 64 * 64


def assert_shape(tensor: torch.Tensor, shape: list, name: str = "tensor") -> None:
    """Raise ValueError unless `tensor` has `shape`; None in `shape` matches any size."""
    ok = tensor.ndim == len(shape) and all(
        expected is None or int(size) == expected for size, expected in zip(tensor.shape, shape)
    )
    if not ok:
        wanted = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(tensor.shape)}, expected {wanted}")


def check_input(tensor, name: str, shape: list, device: torch.device) -> None:
    """Raise a clear error unless `tensor` is a floating-point tensor of `shape` on `device`."""
    wanted = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {wanted}, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of shape {wanted}, got dtype {tensor.dtype}")
    assert_shape(tensor, shape, name)
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {list(tensor.shape)}); pass at least one sample")
    if tensor.device.type != device.type:
        raise ValueError(f"{name} is on {tensor.device}, but the generator is on {device}; use {name}.to({str(device)!r})")


def setup_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """Return the normalised 2-D FIR kernel outer(taps, taps) / sum**2, shape [K, K]."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def bias_act(x, bias=None, activation="linear", gain=1.0, clamp=None):
    """Add a per-channel bias, apply the activation, multiply by `gain`, clamp to +-`clamp`.

    x: [N, C, ...]; bias: [C] or None. The order (bias, activation, gain, clamp) is the one StyleGAN2 uses,
    and the clamp limit does not include the gain of the activation.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}, expected one of {ACTIVATIONS}")

    # Without autograd, each step after the first overwrites the tensor that the first step allocated. The
    # operations and their order stay the same, so the values do too, but no new activation-sized tensor
    # is allocated (and on CPU page-faulted in) per step. The caller's x is never modified. With autograd
    # the steps stay out of place, because the leaky ReLU saves its output for the backward pass.
    inplace = not (torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)))
    owned = False
    if bias is not None:
        x = x + bias.reshape([1, -1] + [1] * (x.ndim - 2))
        owned = True

    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE, inplace=inplace and owned)
        owned = True
    if gain != 1:
        x = x.mul_(gain) if inplace and owned else x * gain
        owned = True
    if clamp is not None:
        x = x.clamp_(-clamp, clamp) if inplace and owned else x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Scale each vector along `dim` to unit root-mean-square."""
    return x * (x.square().mean(dim=dim, keepdim=True) + EPSILON).rsqrt()


def fir_filter(x: torch.Tensor, f: torch.Tensor, padding: int, gain: float = 1.0) -> torch.Tensor:
    """Pad x [N, C, H, W] by `padding` zeros on every side, then filter it with f [K, K] times `gain`."""
    channels = x.shape[1]
    # A true convolution flips the kernel; F.conv2d correlates, so flip first. The StyleGAN kernels are
    # symmetric, which makes the flip a no-op for them, but keep it so any kernel behaves as documented.
    kernel = (f * gain).to(x.dtype).flip([0, 1])
    kernel = kernel[None, None].expand(channels, 1, *f.shape)  # [C, 1, K, K]
    # The zero padding of conv2d itself equals padding with F.pad first and saves a copy of x.
    return F.conv2d(x, kernel, padding=padding, groups=channels)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Upsample x [N, C, H, W] to [N, C, 2H, 2W]: insert zeros, then filter with f [K, K] times 4.

    This is the skip-image upsampling of the StyleGAN2 generator. Zero insertion followed by a padded
    convolution equals a strided transposed convolution with the same kernel, which skips the
    multiplications by the inserted zeros; the outer rows it adds are cropped.
    """
    channels = x.shape[1]
    taps = f.shape[0]
    channels_last = _prefers_channels_last(x)
    if channels_last:
        x = _to_channels_last(x)  # oneDNN is about 6x faster here for the 3-channel skip image at 512x512.
    # Multiplying by up**2 = 4 keeps the mean intensity, since 3 of every 4 samples are inserted zeros.
    kernel = (f * 4).to(x.dtype).flip([0, 1])[None, None].expand(channels, 1, taps, taps)
    y = F.conv_transpose2d(x, kernel, stride=2, groups=channels)  # [N, C, 2H + K - 2, 2W + K - 2]

    # The reference pads the zero-inserted image by (K/2, K/2 - 1); for K = 4 that crops 1 row each side.
    crop = (taps - 2) // 2
    y = y[:, :, crop : crop + 2 * x.shape[2], crop : crop + 2 * x.shape[3]]
    # Back to NCHW, so that the skip image, and with it the generator output, keeps its usual layout.
    return y.contiguous() if channels_last else y


def modulated_conv2d(
    x,  # Input activations [N, C_in, H, W].
    weight,  # Convolution weight [C_out, C_in, K, K].
    styles,  # Per-sample scales of the input channels [N, C_in].
    noise=None,  # Added after the convolution: [N, 1, H', W'], [H', W'] or None.
    up=1,  # 1 for a same-size convolution, 2 for the upsampling convolution.
    padding=0,  # Zero padding of a same-size convolution.
    resample_filter=None,  # FIR kernel [K_f, K_f] that follows the upsampling convolution.
    demodulate=True,  # Normalise each output channel of the modulated weight to unit L2 norm.
    fused=True,  # One grouped convolution over the batch, or scale the activations around a shared conv.
):
    """Run the StyleGAN2 modulated (and usually demodulated) convolution; returns [N, C_out, H', W'].

    The fused path modulates a weight copy per sample and runs them as one grouped convolution; the
    unfused path scales the activations instead, which shares one weight and is what training uses.
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    assert_shape(styles, [batch, in_channels], "styles")

    # In fp16, scale weight and styles to a max-abs of about 1 first so their product cannot overflow;
    # demodulation divides the scale out again.
    if x.dtype == torch.float16 and demodulate:
        fan_in = in_channels * kh * kw
        weight = weight * (1 / math.sqrt(fan_in) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    # Modulate and find the demodulation coefficients of each output channel.
    w = None
    dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # [N, C_out, C_in, K, K]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + EPSILON).rsqrt()  # [N, C_out]
    if demodulate and fused:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)

    if not fused:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = _conv(x, weight.to(x.dtype), up, padding, resample_filter, groups=1)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    # Fold the batch into the channels: x becomes [1, N * C_in, H, W], w becomes [N * C_out, C_in, K, K].
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = _conv(x, w.to(x.dtype), up, padding, resample_filter, groups=batch)
    x = x.reshape(batch, -1, *x.shape[2:])  # [N, C_out, H', W']
    if noise is not None:
        # In place, as the reference does: an fp16 x then gets the sum of x and the fp32 noise rounded once.
        x = x.add_(noise)
    return x


def _conv(x, w, up, padding, resample_filter, groups):
    """Correlate x with w (grouped), or for up=2 run the StyleGAN2 upsampling convolution."""
    if _prefers_channels_last(x):
        x = _to_channels_last(x)
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if up != 2:
        raise ValueError(f"up must be 1 or 2, got {up}")

    # Upsampling: a stride-2 transposed convolution with the kernel as stored (not flipped), then the FIR
    # blur. conv_transpose2d wants [C_in, C_out / groups, K, K] per group, so swap the two channel axes
    # inside each group.
    total_out, in_per_group, kh, kw = w.shape
    w = w.reshape(groups, total_out // groups, in_per_group, kh, kw).transpose(1, 2)
    w = w.reshape(groups * in_per_group, total_out // groups, kh, kw)
    x = F.conv_transpose2d(x, w, stride=2, groups=groups)  # [.., 2H + 1, 2W + 1] for K = 3

    # Pad so that the blur brings 2H + K - 2 back to exactly 2H (padding + 2 - K + 1 on each side for a
    # 4-tap filter) and keep the gain of up**2 = 4 that makes up for the inserted zeros.
    taps = resample_filter.shape[0]
    before = padding + (taps + 1) // 2 - (kh - 1)
    after = padding + (taps - 2) // 2 - (kh - 2)
    if before != after or before < 0:
        raise ValueError(f"unsupported upsampling geometry: kernel {kh}, filter {taps}, padding {padding}")
    return fir_filter(x, resample_filter, before, gain=4)


def _prefers_channels_last(x: torch.Tensor) -> bool:
    """Return whether x [N, C, H, W] is a CPU float32 map large enough to convolve in channels-last order.

    oneDNN runs the CPU convolutions several times faster on large channels-last maps, the depthwise FIR
    filter most of all. Its output stays channels-last, so the noise, bias and activation steps that follow
    need no copy. Only the summation order inside oneDNN changes, so the outputs move by float32 rounding:
    2e-5 to 4e-5 from the official ones on the FFHQ 1024 configuration with random weights, whose images
    reach 10 (bench/generator.py). fp16 stays NCHW so that its rounding keeps following the official path.
    """
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.ndim == 4
        and x.shape[2] * x.shape[3] >= CHANNELS_LAST_MIN_PIXELS
    )


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Return x [N, C, H, W] with channels-last strides, copying only when its memory is in another order."""
    if x.shape[0] == 1 and x.is_contiguous(memory_format=torch.channels_last):
        # reshape() gives a size-1 batch dimension the stride C. F.conv2d then takes x for NCHW and copies
        # it, so restate the strides of the memory that x already has (a view, no copy).
        channels, _, width = x.shape[1:]
        return x.as_strided(x.shape, (x[0].numel(), 1, width * channels, channels))
    return x.contiguous(memory_format=torch.channels_last)
