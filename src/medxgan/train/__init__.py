"""Training: the classifier C and the oracle, medXGAN's G and D against the frozen C, the encoder."""
