"""Exception types of the stylegan2 package."""


class CheckpointError(Exception):
    """A checkpoint could not be read: missing, truncated, of another format, unsafe, or not matching its
    configuration. The message names the file and the next step."""
