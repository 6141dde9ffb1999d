"""A `module:function` factory, as a user's own code would provide one for classifier.arch."""

import torchvision


def binary_resnet18():
    return torchvision.models.resnet18(num_classes=2)
