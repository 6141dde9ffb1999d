"""The names results are keyed by: the explanation methods by family, chance level and the
inversion's own rows. Names only, so code that reads results (report, notebooks) knows them
without loading the compute stack. `medxgan.explainers.EXPLAINERS` holds the classes; a test keeps
the two in step."""

RECONSTRUCTION_MAPS = ("difference", "interpolation", "latent_ig")  # the paper's maps of G(z1, z2)
REAL_IMAGE_MAPS = ("ig_counterfactual", "ig_removal", "latent_ig_to_image")  # medXGAN's maps of x itself
LATENT_SHIFT = ("latent_shift",)                                     # the published generative peer
USES_G = RECONSTRUCTION_MAPS + REAL_IMAGE_MAPS + LATENT_SHIFT
PIXEL_SPACE = ("gradcam", "ig", "ig_blur")                           # read C alone
# the methods whose maps read C's gradients, so randomising C must change them (checks.sanity_check)
READ_C_DIRECTLY = ("gradcam", "ig", "ig_blur", "latent_ig", "ig_counterfactual", "ig_removal", "latent_ig_to_image",
                   "latent_shift")

# what the API and `medxgan explain-images` compute when no methods are named
DEFAULT_METHODS = ("difference", "latent_ig", "ig_counterfactual", "ig_removal", "gradcam", "ig")

RANDOM_METHOD = "random"                   # a random heatmap, scored as chance level
INVERSION_METHOD = "medxgan inversion"     # the rows of the inversion's own fidelity beside the methods'
