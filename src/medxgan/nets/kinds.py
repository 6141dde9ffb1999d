"""Every kind of network a weights file can hold, in one table: `build_from_spec` rebuilds any of
them from the spec stored beside its weights (`medxgan.artifacts.save_model`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medxgan.config import ConfigError
from medxgan.nets import user
from medxgan.nets.encoder import Encoder
from medxgan.nets.networks import CLASSIFIER_ARCHS, build_classifier, build_discriminator, build_generator


def _classifier(spec: dict, allowed_factory) -> nn.Module:
    if spec["arch"] not in CLASSIFIER_ARCHS:  # a file names one of the project's networks, nothing else
        raise ConfigError(f"its spec's 'arch' is {spec['arch']!r}, none of the project's classifiers "
                          f"({', '.join(CLASSIFIER_ARCHS)})")
    return build_classifier(spec["arch"], spec["image_size"], spec["channels"], spec["width"])


def _generator(spec: dict, allowed_factory) -> nn.Module:
    # files written before these options have the release's design
    return build_generator(spec.get("composition", "plain"), spec["nz1"], spec["nz2"], spec["image_size"],
                           spec["channels"], spec["width"], spec.get("upsampling", "transposed"),
                           spec.get("anatomy_width"))


def _discriminator(spec: dict, allowed_factory) -> nn.Module:
    return build_discriminator(spec.get("design", "unconditional"), spec["image_size"], spec["channels"],
                               spec["width"], spec["dropout"])


def _encoder(spec: dict, allowed_factory) -> nn.Module:
    return Encoder(spec["nz1"], spec["nz2"], spec["image_size"], spec["channels"], spec["width"])


NETWORK_KINDS: dict[str, Callable[[dict, str | bool | None], nn.Module]] = {
    "classifier": _classifier,
    "generator": _generator,
    "discriminator": _discriminator,
    "encoder": _encoder,
    "user_classifier": user.build,
}


def build_from_spec(spec: dict, allowed_factory: str | bool | None = True) -> nn.Module:
    """Rebuild a network from the spec stored in its weights file; `allowed_factory` says which
    user factory (code) a user classifier's spec may name (medxgan.nets.user.network)."""
    if spec.get("kind") not in NETWORK_KINDS:
        raise ConfigError(f"its spec's 'kind' is {spec.get('kind')!r}, none of {', '.join(NETWORK_KINDS)}")
    return NETWORK_KINDS[spec["kind"]](spec, allowed_factory)
