"""medXGAN: visual explanations for medical classifiers through a generative latent space."""

__version__ = "0.1.0"
