"""avp: AvatarPointillist, autoregressive 4D Gaussian avatarization from a single portrait."""

__version__ = "0.1.0"
