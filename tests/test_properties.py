"""Contracts stated as properties (hypothesis) where examples would only sample them."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from medxgan.data.manifest import MANIFEST_COLUMNS, read_manifest, write_manifest
from medxgan.inversion import invert
from medxgan.evaluate.metrics import mask_auroc, mass_in_lesion, pointing_game, relevance_rank_accuracy, top_k_iou
from medxgan.nets.networks import Generator, SimpleCNN
from helpers import TUNING_OFF, calibrate_gan_pair

SIDE = 8
# Heatmap values on a coarse grid keep ties common (ties are where orderings and maxima go wrong)
# and avoid float rounding that would break exact comparisons after scaling by a power of two.
heatmaps = arrays(np.float32, (2, SIDE, SIDE), elements=st.integers(0, 8).map(float))
masks = arrays(np.bool_, (2, SIDE, SIDE))
scales = st.sampled_from([0.25, 2.0, 64.0])  # powers of two: scaling is exact in floating point


@given(heatmaps, masks, scales)
def test_localisation_scores_ignore_the_heatmaps_scale(heatmap, mask, scale):
    heatmap, mask = torch.from_numpy(heatmap), torch.from_numpy(mask)
    for score in (pointing_game, mass_in_lesion, relevance_rank_accuracy):
        torch.testing.assert_close(score(heatmap * scale, mask), score(heatmap, mask), equal_nan=True)
    torch.testing.assert_close(mask_auroc(heatmap * scale, mask), mask_auroc(heatmap, mask), equal_nan=True)
    torch.testing.assert_close(top_k_iou(heatmap * scale, mask, 0.1), top_k_iou(heatmap, mask, 0.1),
                               equal_nan=True)


@given(heatmaps, masks)
def test_mass_in_lesion_is_a_share(heatmap, mask):
    heatmap, mask = torch.from_numpy(heatmap), torch.from_numpy(mask)
    mass = mass_in_lesion(heatmap, mask)
    assert ((mass >= 0) & (mass <= 1 + 1e-6)).all()
    inside = heatmap * mask  # the same heatmap with everything outside the lesion removed
    expected = (inside.flatten(1).sum(1) > 0).float()  # all of a non-zero map's mass is inside
    torch.testing.assert_close(mass_in_lesion(inside, mask), expected)


@given(heatmaps, masks)
def test_a_heatmap_inside_the_mask_wins_the_pointing_game(heatmap, mask):
    heatmap, mask = torch.from_numpy(heatmap), torch.from_numpy(mask)
    inside = heatmap * mask + mask * 1.0  # positive inside the lesion, zero outside
    expected = mask.flatten(1).any(dim=1).float()
    torch.testing.assert_close(pointing_game(inside, mask), expected)


cell_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


MAX_ROWS = 6


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An image for each row (a manifest lists each image once) and a mask."""
    folder = tmp_path_factory.mktemp("round trip")
    for row in range(MAX_ROWS):
        Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(folder / f"{row}.png")
    Image.fromarray(np.full((16, 16), 255, dtype=np.uint8)).save(folder / "mask.png")
    return folder


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(["neg", "pos"]), st.sampled_from(["train", "val", "test"]),
                               st.booleans(), cell_text), min_size=1, max_size=MAX_ROWS))
def test_the_manifest_reader_reads_back_what_the_writer_wrote(image_folder, rows):
    table = pd.DataFrame([(f"{row}.png", label, split, "mask.png" if masked else "", patient)
                          for row, (label, split, masked, patient) in enumerate(rows)], columns=list(MANIFEST_COLUMNS))
    manifest = image_folder / "manifest.csv"
    write_manifest(table, manifest)
    back = read_manifest(manifest, "neg", "pos")
    pd.testing.assert_frame_equal(back.loc[:, list(MANIFEST_COLUMNS)], table, check_dtype=False)
    assert back["target"].tolist() == [int(label == "pos") for label, *_ in rows]


NZ1, NZ2, N_IMAGES, BATCH = 6, 3, 8, 2
INVERSION = {"init": "random", "restarts": 2, "steps": 6, "lr": 0.05, "mse_weight": 10.0,
             "local_weight": 0.0, "local_patches": [4, 8], "bce_weight": 1.0,
             "batch_size": BATCH, "tuning": TUNING_OFF}


@pytest.fixture(scope="module")
def inversion_case():
    torch.manual_seed(0)
    generator, classifier = Generator(NZ1, NZ2, 64, channels=1, width=0.0625), SimpleCNN(64, 1, width=0.25)
    calibrate_gan_pair(generator, classifier)
    with torch.no_grad():
        images = generator(torch.randn(N_IMAGES, NZ1), torch.randn(N_IMAGES, NZ2))
    rows = torch.arange(N_IMAGES) * 3 + 1
    whole = invert(copy.deepcopy(generator), copy.deepcopy(classifier), images, rows, INVERSION, seed=4)
    return generator, classifier, images, rows, whole


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(boundaries=st.sets(st.integers(1, N_IMAGES // BATCH - 1)))
def test_chunked_and_whole_inversion_agree_at_batch_multiples(inversion_case, boundaries):
    # A cluster job inverts one chunk of the test set; chunks cut at multiples of batch_size hold
    # the same batches as the whole run, and each image's starts depend only on its row.
    generator, classifier, images, rows, whole = inversion_case
    cuts = [0, *sorted(b * BATCH for b in boundaries), N_IMAGES]
    parts = [invert(generator, classifier, images[a:b], rows[a:b], INVERSION, seed=4)
             for a, b in zip(cuts, cuts[1:])]
    for name, tensor in whole.as_tensors().items():
        assert torch.equal(torch.cat([part.as_tensors()[name] for part in parts]), tensor), name
