"""The tiny generator configuration the unit tests build: 32 px, 16 channels, 2 mapping layers, 8 ws entries."""

TINY_GENERATOR = dict(
    z_dim=16,
    c_dim=0,
    w_dim=16,
    img_resolution=32,
    img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(channel_base=256, channel_max=16),
)
