"""medXGAN: visual explanations for medical classifiers through a generative latent space.

The public API, loaded on first use so that `import medxgan` (and `medxgan --help`) stays light:

    from medxgan import MedXGAN, build_explainer, EXPLAINERS
"""

from importlib import import_module

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "MedXGAN": "medxgan.api",
    "default_settings": "medxgan.api",
    "EXPLAINERS": "medxgan.explainers",
    "Explainer": "medxgan.explainers",
    "build_explainer": "medxgan.explainers",
    "InversionRecord": "medxgan.inversion",
    "invert": "medxgan.inversion",
    "reconstruct": "medxgan.inversion",
    "load_model": "medxgan.artifacts",
    "save_model": "medxgan.artifacts",
    "load_config": "medxgan.config",
    "dataset_settings": "medxgan.config",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medxgan' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
