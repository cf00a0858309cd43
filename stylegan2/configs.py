"""Named generator configurations, as keyword arguments of the Generator constructor."""

import copy

# The official FFHQ 1024x1024 network (stylegan2-ada-pytorch ffhq.pkl): config F sizes with the
# train.py settings of 4 fp16 resolutions and conv_clamp 256.
FFHQ_1024 = dict(
    z_dim=512,
    c_dim=0,
    w_dim=512,
    img_resolution=1024,
    img_channels=3,
    mapping_kwargs=dict(num_layers=8),
    synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256),
)


def ffhq_kwargs(resolution: int = 1024) -> dict:
    """Return a copy of FFHQ_1024 at another output resolution (the same channel settings)."""
    return dict(copy.deepcopy(FFHQ_1024), img_resolution=resolution)
