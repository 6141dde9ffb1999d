"""Figures: the paper's pipeline rows, interpolation strip, disentanglement and perturbation figures,
GAN losses, and the metrics plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from medxgan.data.manifest import ImageSet  # noqa: E402
from medxgan.evaluate.metrics import min_max_normalise, perturb_top_k  # noqa: E402
from medxgan.evaluate.scoring import inversion_fidelity
from medxgan.explainers import Interpolation  # noqa: E402
from medxgan.files import atomic_path
from medxgan.inversion import InversionRecord
from medxgan.names import INVERSION_METHOD  # noqa: E402
from medxgan.nets.networks import positive_probability  # noqa: E402
from medxgan.torch_utils import module_device  # noqa: E402

# the pipeline figure's map columns: the paper's four, then the maps of the real image and the peers
HEATMAP_COLUMNS = {"difference": "difference map", "gradcam": "Grad-CAM", "latent_ig": "Latent IG", "ig": "IG",
                   "ig_counterfactual": "IG from G(z1, 0)", "ig_removal": "IG, lesion removed",
                   "latent_ig_to_image": "Latent IG to x",
                   "latent_shift": "Latent Shift", "ig_blur": "IG from blur"}
CELL_INCHES = 1.6
LOSS_SMOOTHING = 50  # steps in the rolling mean of the loss curves
METRICS_PER_ROW = 3
# Error bars and bands: mean +- 1.96 standard errors, not seaborn's bootstrap, whose 1,000 resamples
# per point took 8 of the figures step's 23 s and 2 of check's (the default run's curves' bands
# came out 0.8-1.1x as wide)
MEAN_95 = ("se", 1.96)


def save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(path).suffix.lstrip("."))
    plt.close(fig)


def _grey(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W) in [0, 1]."""
    return ((image.float().mean(0) + 1) / 2).clamp(0, 1).numpy()


def _normalised(heatmap: torch.Tensor) -> np.ndarray:
    """(H, W) heatmap scaled to [0, 1] for display."""
    return min_max_normalise(heatmap.float()[None])[0].numpy()


def _probability_label(p_positive: float) -> str:
    return f"[{1 - p_positive:.2f}, {p_positive:.2f}]"


def example_indices(data: ImageSet, count: int) -> list[int]:
    """Evenly spaced test positives, preferring those with a lesion mask to draw."""
    candidates = data.has_mask.nonzero().flatten().tolist() or list(range(len(data)))
    picks = np.linspace(0, len(candidates) - 1, min(count, len(candidates))).round().astype(int)
    return [candidates[i] for i in picks]


def pipeline_rows(C, data: ImageSet, latents: InversionRecord, heatmaps: dict[str, torch.Tensor], examples: list[int]) -> plt.Figure:
    """Original, reconstruction, negative realisation, difference, colorized map, Grad-CAM, LIG, IG,
    then the other maps of HEATMAP_COLUMNS that were computed."""
    maps = [(title, heatmaps[m]) for m, title in HEATMAP_COLUMNS.items() if m in heatmaps]
    columns = ["original", "reconstruction", "negative realisation"] + [t for t, _ in maps]
    if "difference" in heatmaps:  # the paper shows the colorized map right after the difference map
        columns.insert(4, "colorized map")
    fig, axes = plt.subplots(len(examples), len(columns), squeeze=False,
                             figsize=(CELL_INCHES * len(columns), CELL_INCHES * 1.25 * len(examples)))
    for row, i in enumerate(examples):
        original = _grey(data.images[i])
        images = [(original, latents.p_image[i]), (_grey(latents.reconstruction[i]), latents.p_reconstruction[i]),
                  (_grey(latents.negative[i]), latents.p_negative[i])]
        cells = [(img, _probability_label(float(p)), "gray", None) for img, p in images]
        cells += [(_normalised(h[i]), "", "inferno", None) for _, h in maps]
        if "difference" in heatmaps:
            cells.insert(4, (original, "", "gray", _normalised(heatmaps["difference"][i])))
        for col, (img, label, cmap, overlay) in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            if overlay is not None:
                ax.imshow(overlay, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if data.has_mask[i] and (col == 0 or col >= len(images)):  # the original and every map
                ax.contour(data.masks[i].numpy(), levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(label, fontsize=7)
            if row == 0:
                ax.set_title(columns[col], fontsize=8)
    fig.suptitle("medXGAN pipeline; C's [negative, positive] probabilities under each image; lesion mask in cyan",
                 fontsize=9)
    return fig


@torch.no_grad()
def interpolation_strip(C, G, latents: InversionRecord, examples: list[int], n_points: int) -> plt.Figure:
    """G(z1, a z2) from the negative realisation (a = 0) to the reconstruction (a = 1), with C's probabilities."""
    device = module_device(G)
    interpolation = Interpolation(C, G, n_points=n_points)
    z1, z2 = latents.z1[examples].to(device), latents.z2[examples].to(device)
    path = interpolation.path(z1, z2).cpu()  # (N, P, C, H, W)
    accumulated = interpolation.attribute(path[:, 0], latents=(z1, z2))
    probs = positive_probability(C, path.flatten(0, 1).to(device)).view(len(examples), n_points).cpu()
    alphas = np.linspace(0, 1, n_points)
    fig, axes = plt.subplots(len(examples), n_points + 1, squeeze=False,
                             figsize=(CELL_INCHES * 0.8 * (n_points + 1), CELL_INCHES * len(examples)))
    for row in range(len(examples)):
        for col in range(n_points):
            ax = axes[row, col]
            ax.imshow(_grey(path[row, col]), cmap="gray", vmin=0, vmax=1)
            ax.set_xlabel(f"p={probs[row, col]:.2f}", fontsize=7)
            if row == 0:
                ax.set_title(f"a={alphas[col]:.1f}", fontsize=8)
        ax = axes[row, n_points]
        ax.imshow(_normalised(accumulated[row]), cmap="inferno")
        if row == 0:
            ax.set_title("accumulated |Δ|", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Interpolation G(z1, a·z2); p = C's positive probability", fontsize=9)
    return fig


@torch.no_grad()
def disentanglement_samples(C, oracle, G, count: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """`count` random z1 (drawn from `seed`), each decoded with z2 = 0 ("negative") and with a random
    z2 ~ N(0, I) ("positive"): the images (CPU) and C's and the oracle's positive probabilities."""
    rng = torch.Generator().manual_seed(seed)  # its own generator: the figure does not depend on what ran before
    z1 = torch.randn(count, G.nz1, generator=rng)
    codes = {"negative": torch.zeros(count, G.nz2), "positive": torch.randn(count, G.nz2, generator=rng)}
    device = module_device(G)
    samples = {}
    for name, z2 in codes.items():
        images = G(z1.to(device), z2.to(device))
        samples[name] = {"images": images.cpu(), "C": positive_probability(C, images).cpu(),
                         "oracle": positive_probability(oracle, images).cpu()}
    return samples


DISENTANGLEMENT_ROWS = {"negative": "negative realisation G(z1, 0)", "positive": "random pathology G(z1, z2)"}


def disentanglement_grid(samples: dict[str, dict[str, torch.Tensor]]) -> plt.Figure:
    """The paper's disentanglement figure: one column per z1, G(z1, 0) above G(z1, z2)."""
    count = len(samples["negative"]["images"])
    fig, axes = plt.subplots(len(DISENTANGLEMENT_ROWS), count, squeeze=False,
                             figsize=(CELL_INCHES * count, CELL_INCHES * 1.25 * len(DISENTANGLEMENT_ROWS)))
    for row, (name, title) in enumerate(DISENTANGLEMENT_ROWS.items()):
        part = samples[name]
        for col in range(count):
            ax = axes[row, col]
            ax.imshow(_grey(part["images"][col]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"C {part['C'][col]:.2f} · oracle {part['oracle'][col]:.2f}", fontsize=7)
        axes[row, 0].set_ylabel(title, fontsize=8)
    fig.suptitle("Disentanglement: the same random z1 per column, decoded with z2 = 0 (top) and a random z2 "
                 "(bottom);\nC's and the oracle's positive probability under each image", fontsize=9)
    return fig


PERTURBATION_COLUMNS = {"gradcam": "Grad-CAM", "ig": "IG", "ig_blur": "IG from blur", "difference": "medXGAN difference",
                        "latent_ig": "medXGAN Latent IG", "ig_counterfactual": "medXGAN IG from G(z1, 0)",
                        "ig_removal": "medXGAN IG, lesion removed"}


@torch.no_grad()
def perturbed_examples(C, images: torch.Tensor, heatmaps: dict[str, torch.Tensor],
                       fraction: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Name -> (images, C's positive probabilities), both on the CPU: the originals under "original",
    and for each method of PERTURBATION_COLUMNS present the images with that method's top `fraction`
    of pixels set to the image mean, by the probability-drop metric's own function."""
    device = module_device(C)
    images = images.to(device)
    perturbed = {"original": images} | {method: perturb_top_k(images, heatmaps[method], fraction)
                                        for method in PERTURBATION_COLUMNS if method in heatmaps}
    return {name: (batch.cpu(), positive_probability(C, batch).cpu()) for name, batch in perturbed.items()}


def perturbation_rows(C, data: ImageSet, heatmaps: dict[str, torch.Tensor], examples: list[int],
                      fraction: float) -> plt.Figure:
    """The paper's perturbation figure: each example, then the same image with each method's top
    pixels set to the image mean, C's [negative, positive] probabilities under each."""
    chosen = {method: maps[examples] for method, maps in heatmaps.items()}
    cells = perturbed_examples(C, data.images[examples], chosen, fraction)
    titles = {"original": "original", **PERTURBATION_COLUMNS}
    fig, axes = plt.subplots(len(examples), len(cells), squeeze=False,
                             figsize=(CELL_INCHES * len(cells), CELL_INCHES * 1.25 * len(examples)))
    for col, (name, (images, probabilities)) in enumerate(cells.items()):
        for row in range(len(examples)):
            ax = axes[row, col]
            ax.imshow(_grey(images[row]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(_probability_label(float(probabilities[row])), fontsize=7)
            if row == 0:
                ax.set_title(titles[name], fontsize=8)
    fig.suptitle(f"Perturbation: each method's top {fraction:.0%} of pixels set to the image mean; "
                 "C's [negative, positive] probabilities under each image", fontsize=9)
    return fig


def positive_realisation_row(image: torch.Tensor, p_image: float, result: dict, i: int) -> plt.Figure:
    """For an image C calls negative: the image, its anatomy G(z1, 0), the smallest change G(z1, z2*)
    C calls positive, and their difference: what C would take as pathology here."""
    cells = [("image", _grey(image), _probability_label(p_image), "gray"),
             ("anatomy G(z1, 0)", _grey(result["negative"][i]), _probability_label(float(result["p_negative"][i])), "gray"),
             ("positive realisation G(z1, z2*)", _grey(result["positive"][i]),
              _probability_label(float(result["p_positive"][i])), "gray"),
             ("difference", _normalised(result["difference"][i]), "", "inferno")]
    fig, axes = plt.subplots(1, len(cells), figsize=(CELL_INCHES * len(cells), CELL_INCHES * 1.3))
    for ax, (title, picture, label, cmap) in zip(axes, cells):
        ax.imshow(picture, cmap=cmap, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(label, fontsize=7)
    made = "C calls it positive" if result["flipped"][i] else "C never called it positive within the search"
    fig.suptitle(f"An image C calls negative: what C would take as pathology in this anatomy ({made}); "
                 "C's [negative, positive] probabilities", fontsize=9)
    return fig


def gan_losses(losses: pd.DataFrame) -> plt.Figure:
    smooth = losses.set_index("step").rolling(LOSS_SMOOTHING, min_periods=1).mean()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    smooth[["d_loss", "g_adversarial"]].plot(ax=axes[0], title="adversarial losses")
    # the proximity, mask and reconstruction terms are drawn only where the run switched them on (a log axis has no 0)
    terms = ["g_classifier"] + [name for name in ("g_proximity", "g_mask", "g_reconstruction")
             if name in smooth and smooth[name].gt(0).all()]
    smooth[terms].plot(ax=axes[1], title="G's other terms (unweighted)", logy=True)
    smooth[["d_real", "d_fake"]].plot(ax=axes[2], title="D's mean output", ylim=(0, 1))
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def method_colours(count: int) -> list:
    """One colour per method: the colour-blind palette's ten, evenly spaced hues beyond them."""
    return sns.color_palette("colorblind" if count <= 10 else "husl", count)


def metrics_bars(table: pd.DataFrame) -> plt.Figure:
    """Methods side by side for each metric: means with their 95% bootstrap confidence intervals."""
    scores = table[table.method != INVERSION_METHOD]
    metrics = list(dict.fromkeys(scores.metric))
    columns = min(METRICS_PER_ROW, len(metrics))
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.4 * rows), squeeze=False)
    methods = list(dict.fromkeys(scores.method))
    palette = dict(zip(methods, method_colours(len(methods))))
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        part = scores[scores.metric == metric]
        # the bars are the table's means; their intervals are the table's, drawn below (not re-bootstrapped)
        sns.barplot(data=part, x="method", y="mean", hue="method", palette=palette, ax=ax, legend=False, errorbar=None)
        # drawn from its ends, not as offsets from the mean: a bootstrap interval of few resamples may miss it
        ax.vlines(range(len(part)), part["ci_low"], part["ci_high"], color="black", linewidth=1)
        for end in ("ci_low", "ci_high"):
            ax.scatter(range(len(part)), part[end], marker="_", color="black", s=40, linewidths=1)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.tight_layout()
    return fig


def faithfulness_curves(curves: pd.DataFrame) -> plt.Figure:
    """Mean deletion and insertion curves per method with 95% bands (1.96 standard errors): C's
    probability of the positive class as pixels are swapped in heatmap order. Faithful: deletion
    falls early, insertion rises early; the `random` heatmap shows chance."""
    kinds = list(dict.fromkeys(curves.curve)) or ["none"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        part = curves[curves.curve == kind]
        if part.empty:
            ax.text(0.5, 0.5, "no deletion or insertion metric configured", ha="center", va="center")
            ax.set_axis_off()
            continue
        sns.lineplot(data=part, x="fraction", y="p_positive", hue="method", errorbar=MEAN_95, ax=ax)
        action = "replaced by the baseline" if kind == "deletion" else "revealed on the baseline"
        ax.set(title=f"{kind} curve", xlabel=f"share of pixels {action}, most relevant first",
               ylabel="C's probability of positive", ylim=(0, 1))
    fig.tight_layout()
    return fig


def sanity_curves(sanity: pd.DataFrame) -> plt.Figure:
    """Cascading randomisation: how similar each method's heatmap stays as C's layers are randomised
    from the output down. A method that explains C falls towards 0; one that stays near 1 fails."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    if sanity.empty:  # a classifier whose layers cannot be re-initialised (TorchScript)
        for ax in axes:
            ax.text(0.5, 0.5, "not run: C's layers cannot be re-initialised", ha="center", va="center")
            ax.set_axis_off()
        return fig
    order = sanity.groupby("step")["layer"].first()
    for ax, metric in zip(axes, ("spearman", "ssim")):
        sns.lineplot(data=sanity, x="step", y=metric, hue="method", marker="o", errorbar=MEAN_95, ax=ax)
        ax.set_xticks(order.index, order.values, rotation=60, fontsize=7)
        ax.set_xlabel("randomised down to layer")
        ax.set_ylabel(f"{metric} with the trained C's heatmap")
    fig.tight_layout()
    return fig


def robustness_curves(table: pd.DataFrame) -> plt.Figure:
    """Heatmap similarity under Gaussian input noise, and max-sensitivity, per method."""
    noise = table[table.metric != "max_sensitivity"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, metric in zip(axes, ("spearman", "ssim")):
        sns.lineplot(data=noise[noise.metric == metric], x="sigma", y="value", hue="method", marker="o",
                     errorbar=MEAN_95, ax=ax)
        ax.set_xlabel("noise sigma (image range [-1, 1])")
        ax.set_ylabel(f"{metric} with the clean heatmap")
    sns.barplot(data=table[table.metric == "max_sensitivity"], x="method", y="value", errorbar=MEAN_95, ax=axes[2])
    axes[2].set_ylabel("max-sensitivity (relative)")
    axes[2].tick_params(axis="x", rotation=60)
    fig.tight_layout()
    return fig


def inversion_quality(data: ImageSet, latents: InversionRecord, worst: int) -> plt.Figure:
    """How faithful the inversion is: the distributions of reconstruction error and of C's agreement,
    and the `worst` reconstructions by MSE (the paper's failure cases)."""
    order = latents.mse.argsort(descending=True)[:worst].tolist()
    fig = plt.figure(figsize=(max(9, 2.3 * len(order)), 2.8 + 2.1 * 3))
    grid = fig.add_gridspec(4, max(3, len(order)), height_ratios=[1.3, 1, 1, 1])
    top = [fig.add_subplot(grid[0, i * grid.ncols // 3:(i + 1) * grid.ncols // 3]) for i in range(3)]
    sns.histplot(latents.mse.numpy(), ax=top[0]).set(title="reconstruction MSE", xlabel="")
    sns.histplot(latents.ssim.numpy(), ax=top[1]).set(title="reconstruction SSIM", xlabel="")
    fidelity = inversion_fidelity(latents)
    shares = {label: fidelity[name].mean().item() for name, label in (
        ("reconstruction_called_positive", "G(z1, z2) called positive"),
        ("negative_called_negative", "G(z1, 0) called negative"),
        ("classifier_agreement", "C agrees on x, G(z1, z2)"))}
    sns.barplot(x=list(shares.values()), y=list(shares), ax=top[2], orient="h").set(xlim=(0, 1), title="classifier")
    for col, i in enumerate(order):
        cells = [("original", data.images[i], latents.p_image[i]),
                 ("reconstruction", latents.reconstruction[i], latents.p_reconstruction[i]),
                 ("negative realisation", latents.negative[i], latents.p_negative[i])]
        for row, (title, image, p) in enumerate(cells, start=1):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(_grey(image), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(_probability_label(float(p)), fontsize=7)
            if col == 0:
                ax.set_ylabel(title, fontsize=8)
            if row == 1:
                ax.set_title(f"MSE {latents.mse[i]:.3f}", fontsize=8)
    fig.suptitle(f"Inversion of the test positives; the {len(order)} worst reconstructions below", fontsize=9)
    fig.tight_layout()
    return fig


def job_times(table: pd.DataFrame, hardware: str) -> plt.Figure:
    """Each job's wall time (bars, one colour per dataset) with its peak memory written beside it."""
    table = table.assign(label=table.job + "  ·  " + table.dataset)
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(table) + 1.4))
    sns.barplot(data=table, y="label", x="seconds", hue="dataset", dodge=False, ax=ax)
    for bar_index, row in enumerate(table.itertuples()):
        ax.annotate(f" {row.seconds:.0f} s, {row.max_rss_mb:.0f} MB", (row.seconds, bar_index), va="center", fontsize=8)
    ax.set_xlabel("wall time (s), peak memory beside each bar")
    ax.set_ylabel("")
    ax.set_xlim(0, table.seconds.max() * 1.35)
    ax.set_title(f"Workflow jobs on {hardware}\n(jobs of different datasets ran side by side; the sum is not the run's time)",
                 fontsize=9)
    fig.tight_layout()
    return fig


ABLATION_PANELS = ("SSIM", "valid for C and oracle", "difference: pointing game", "latent_ig: pointing game",
                   "ig_removal: pointing game", "difference: mass in lesion", "latent_ig: mass in lesion",
                   "ig_removal: mass in lesion")
ABLATION_PANELS_PER_ROW = 4


def ablation_summary(table: pd.DataFrame) -> plt.Figure:
    """Key measures per GAN variant: one point per seed, one colour per dataset; C-only methods'
    values as dashed lines for scale."""
    from medxgan.report.ablation import C_ONLY, measure_names

    table = table.assign(measure=measure_names(table))
    variants = table[table.variant != C_ONLY]
    panels = [m for m in ABLATION_PANELS if m in set(variants.measure)]
    columns = min(ABLATION_PANELS_PER_ROW, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, measure in zip(axes.flat, panels):
        sns.stripplot(data=variants[variants.measure == measure], x="variant", y="value", hue="dataset", dodge=True,
                      ax=ax, legend=ax is axes[0][0])
        metric = measure.split(": ")[-1]
        reference = table[(table.variant == C_ONLY) & (table.method == "ig") & table.measure.str.endswith(metric)]
        for value in reference.value:
            ax.axhline(value, color="grey", linestyle="--", linewidth=0.8)  # IG on each dataset
        ax.set_title(measure, fontsize=9)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle("GAN variants, one point per seed (dashed: pixel-space IG)", fontsize=10)
    fig.tight_layout()
    return fig
