"""The StyleGAN2 synthesis network ws -> image: modulated convolutions, noise, skip-connected ToRGB."""

import math

import numpy as np
import torch
import torch.utils.checkpoint
from torch import nn

from .mapping import FullyConnectedLayer
from .ops import LRELU_GAIN, assert_shape, bias_act, check_input, modulated_conv2d, setup_filter, upsample2d

NOISE_MODES = ("random", "const", "none")
ARCHITECTURES = ("orig", "skip")

# Device types on which blocks flagged use_fp16 really compute in float16. CPU and MPS always use float32:
# half precision there is slow or unsupported and would move the outputs away from the reference.
FP16_DEVICE_TYPES = ("cuda",)


class SynthesisLayer(nn.Module):
    """A modulated 3x3 convolution with noise, bias, leaky ReLU and clamp; conv0 of a block upsamples."""

    def __init__(
        self,
        in_channels,  # Number of input channels.
        out_channels,  # Number of output channels.
        w_dim,  # Size of w, the input of the style affine.
        resolution,  # Output resolution in pixels.
        kernel_size=3,  # Width of the convolution kernel.
        up=1,  # 2 to double the resolution before the convolution.
        use_noise=True,  # Add per-pixel noise scaled by a learned strength.
        activation="lrelu",  # "lrelu" or "linear".
        resample_filter=(1, 3, 3, 1),  # 1-D taps of the FIR kernel used for upsampling.
        conv_clamp=None,  # Clamp the output to +-conv_clamp; None disables it.
        channels_last=False,  # Use the channels-last memory format (a speed option for fp16 on CUDA).
    ):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0

        # Parameters and buffers are registered in the order of the official state_dict.
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        self.weight = nn.Parameter(weight.to(memory_format=memory_format))
        if use_noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))

    def forward(self, x, w, noise_mode="random", fused_modconv=True, gain=1):
        """x: [N, C_in, H, W], w: [N, w_dim] -> [N, C_out, resolution, resolution]."""
        assert_shape(x, [None, self.weight.shape[1], self.resolution // self.up, self.resolution // self.up], "x")
        styles = self.affine(w)  # [N, C_in]

        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength  # [H, W], broadcast over batch and channels

        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            fused=fused_modconv,
        )

        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self):
        c_out, c_in = self.weight.shape[:2]
        return f"in={c_in}, out={c_out}, resolution={self.resolution}, up={self.up}, clamp={self.conv_clamp}"


class ToRGBLayer(nn.Module):
    """A modulated 1x1 convolution to image channels, without demodulation or noise."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        self.weight = nn.Parameter(weight.to(memory_format=memory_format))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        # Equalised learning rate; applied to the styles because the weight is not demodulated.
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x, w, fused_modconv=True):  # [N, C_in, H, W] -> [N, img_channels, H, W]
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: [upsampling conv0,] conv1 and, in skip mode, ToRGB."""

    def __init__(
        self,
        in_channels,  # Channels coming from the previous block; 0 for the first block, which has `const`.
        out_channels,  # Channels of this block.
        w_dim,  # Size of w.
        resolution,  # Resolution of this block in pixels.
        img_channels,  # Channels of the output image (3 for RGB, 1 for grayscale).
        is_last,  # Whether this is the last, full-resolution block.
        architecture="skip",  # "skip": every block adds its ToRGB output; "orig": only the last one.
        resample_filter=(1, 3, 3, 1),  # 1-D taps of the upsampling FIR kernel.
        conv_clamp=None,  # Clamp of the activations, see SynthesisLayer.
        use_fp16=False,  # Compute this block in float16 on CUDA (see FP16_DEVICE_TYPES).
        fp16_channels_last=False,  # Use channels-last memory in fp16 blocks.
        **layer_kwargs,  # Passed to each SynthesisLayer: use_noise, activation, kernel_size.
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"unsupported synthesis architecture {architecture!r}; this implementation supports "
                f"{ARCHITECTURES} (the official FFHQ generator uses 'skip')"
            )
        self.in_channels = in_channels
        self.resolution = resolution
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.num_conv = 0
        self.num_torgb = 0

        # Registration order matches the official state_dict: const, resample_filter, conv0, conv1, torgb.
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        common = dict(
            resample_filter=resample_filter, conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs
        )
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, **common)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, **common)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(
                out_channels, img_channels, w_dim, conv_clamp=conv_clamp, channels_last=self.channels_last
            )
            self.num_torgb += 1

    def compute_dtype(self, device, force_fp32=False):
        """Return the dtype this block computes in on `device`."""
        if self.use_fp16 and not force_fp32 and device.type in FP16_DEVICE_TYPES:
            return torch.float16
        return torch.float32

    def forward(self, x, img, ws, noise_mode="const", force_fp32=False, fused_modconv=None):
        """x: [N, C_in, R/2, R/2] or None, img: [N, img_channels, R/2, R/2] or None, ws: [N, num_conv +
        num_torgb, w_dim] -> (x [N, C_out, R, R], img [N, img_channels, R, R] float32 or None)."""
        w_iter = iter(ws.unbind(dim=1))
        dtype = self.compute_dtype(ws.device, force_fp32)
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format

        # The fused modulated conv is faster for inference; training (and fp16 batches) use the unfused one.
        if fused_modconv is None:
            fused_modconv = (not self.training) and (dtype == torch.float32 or ws.shape[0] == 1)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])  # [N, C, 4, 4]
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)

        # Skip architecture: the image is the upsampled previous image plus this block's ToRGB, in float32.
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


class SynthesisNetwork(nn.Module):
    """Stack of SynthesisBlocks from 4x4 to img_resolution; consumes ws [N, num_ws, w_dim]."""

    def __init__(
        self,
        w_dim,  # Size of w.
        img_resolution,  # Output resolution, a power of two >= 4.
        img_channels,  # Output channels.
        channel_base=32768,  # Channels at resolution R are min(channel_base // R, channel_max).
        channel_max=512,  # Maximum channels of any block.
        num_fp16_res=0,  # Number of highest resolutions flagged to compute in float16 on CUDA.
        **block_kwargs,  # Passed to each SynthesisBlock.
    ):
        super().__init__()
        log2 = int(np.log2(img_resolution)) if img_resolution >= 4 else 0
        if img_resolution < 4 or img_resolution != 2**log2:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = log2
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)

        # Recompute each block's activations during backward instead of storing them (saves memory while
        # training, costs about one extra forward pass); has no effect without gradients.
        self.gradient_checkpointing = False

        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0,
                channels[res],
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                is_last=is_last,
                use_fp16=res >= fp16_resolution,
                **block_kwargs,
            )
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def blocks(self):
        """Return the blocks from 4x4 upwards."""
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def block_ws(self, ws):
        """Split ws [N, num_ws, w_dim] into each block's slice; a ToRGB shares its w with the next conv0."""
        slices = []
        index = 0
        for block in self.blocks():
            slices.append(ws.narrow(1, index, block.num_conv + block.num_torgb))
            index += block.num_conv
        return slices

    def forward(self, ws, noise_mode="const", force_fp32=False, fused_modconv=None):
        """ws: [N, num_ws, w_dim] -> image [N, img_channels, img_resolution, img_resolution], float32."""
        check_ws(ws, self.num_ws, self.w_dim, self.b4.const.device)
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")

        ws = ws.to(torch.float32)
        options = dict(noise_mode=noise_mode, force_fp32=force_fp32, fused_modconv=fused_modconv)
        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        x = img = None
        for block, block_ws in zip(self.blocks(), self.block_ws(ws)):
            if checkpointing:
                # The RNG state is saved and restored, so noise_mode="random" recomputes the same noise.
                x, img = torch.utils.checkpoint.checkpoint(block, x, img, block_ws, use_reentrant=False, **options)
            else:
                x, img = block(x, img, block_ws, **options)
        return img

    def extra_repr(self):
        return f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}"


def check_ws(ws, num_ws, w_dim, device):
    """Raise a clear error unless ws is a floating-point tensor [N, num_ws, w_dim] on `device`."""
    if isinstance(ws, torch.Tensor) and ws.ndim == 2 and ws.shape[1] == w_dim:
        raise ValueError(
            f"ws has shape {list(ws.shape)}, expected [N, {num_ws}, {w_dim}]; broadcast a single w per "
            f"sample with w.unsqueeze(1).repeat(1, {num_ws}, 1)"
        )
    check_input(ws, "ws", [None, num_ws, w_dim], device)
