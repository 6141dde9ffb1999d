"""The networks: medXGAN's generator and discriminator, the classifiers, the encoder, a user's own classifier, and the table of kinds that rebuilds any of them from its spec."""
