"""The mapping network z -> w of StyleGAN2 and its equalised-learning-rate dense layer."""

import math

import torch
from torch import nn

from .ops import ACTIVATIONS, bias_act, check_input, normalize_2nd_moment


class FullyConnectedLayer(nn.Module):
    """Dense layer with the equalised learning rate of StyleGAN (Karras et al. 2018).

    The weight is stored divided by `lr_multiplier` and rescaled by lr_multiplier / sqrt(in_features) at run
    time, so every layer gets the same effective learning rate whatever its fan-in.
    """

    def __init__(
        self,
        in_features,  # Number of input features.
        out_features,  # Number of output features.
        bias=True,  # Add a learned bias.
        activation="linear",  # "linear" or "lrelu".
        lr_multiplier=1.0,  # Learning-rate multiplier of this layer (0.01 in the mapping network).
        bias_init=0.0,  # Initial bias value; 1 for the style affines so that styles start at 1.
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}, expected one of {ACTIVATIONS}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):  # [N, in_features] -> [N, out_features]
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain

        # addmm fuses the bias into the matrix product, which is what the reference does for linear layers;
        # keeping the same op keeps the rounding the same.
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, activation=self.activation, gain=_activation_gain(self.activation))

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


def _activation_gain(activation):
    return math.sqrt(2) if activation == "lrelu" else 1.0


class MappingNetwork(nn.Module):
    """Map a latent z (and an optional class label c) to the intermediate latent w, broadcast to ws."""

    def __init__(
        self,
        z_dim,  # Size of the input latent z; 0 for none.
        c_dim,  # Size of the class label c; 0 for an unconditional generator.
        w_dim,  # Size of the intermediate latent w.
        num_ws,  # Number of copies of w in the output ws; None returns w itself, [N, w_dim].
        num_layers=8,  # Number of dense layers.
        embed_features=None,  # Size of the label embedding; None means w_dim.
        layer_features=None,  # Width of the hidden layers; None means w_dim.
        activation="lrelu",  # Activation of every dense layer.
        lr_multiplier=0.01,  # Learning-rate multiplier of the dense layers.
        w_avg_beta=0.995,  # Decay of the running mean of w used for truncation; None disables it.
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            layer = FullyConnectedLayer(
                features[i], features[i + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{i}", layer)

        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False):
        """Return ws [N, num_ws, w_dim] (or w [N, w_dim] when num_ws is None)."""
        # Normalise the inputs; z may be float64 (as numpy samples it) and is computed in float32.
        x = None
        device = next(self.parameters()).device
        if self.z_dim > 0:
            check_input(z, "z", [None, self.z_dim], device)
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional: pass class labels c of shape [N, {self.c_dim}]")
            check_input(c, "c", [None if x is None else x.shape[0], self.c_dim], device)
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y

        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)

        # Track the running mean of w while training, as the official training loop does.
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, num_ws, w_dim]

        # Truncation trick: pull w towards the mean by truncation_psi, for the first `truncation_cutoff`
        # entries of ws only when a cutoff is given.
        self._check_truncation(truncation_psi, truncation_cutoff)
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs w_avg, but this mapping network was built with w_avg_beta=None")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def _check_truncation(self, psi, cutoff) -> None:
        if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not math.isfinite(psi):
            raise ValueError(f"truncation_psi must be a finite number (1 disables truncation), got {psi!r}")
        limit = self.num_ws if self.num_ws is not None else 0
        if cutoff is not None and (isinstance(cutoff, bool) or not isinstance(cutoff, int) or not 0 <= cutoff <= limit):
            raise ValueError(f"truncation_cutoff must be None or an integer in [0, {limit}], got {cutoff!r}")

    def extra_repr(self):
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"
