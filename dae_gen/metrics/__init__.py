"""FID/KID, precision/recall on TF-Inception features (cached reference statistics), distances for 2-D toys."""

from dae_gen.metrics.evaluate import FIDMonitor, dataset_reference, evaluate_samples
from dae_gen.metrics.fid import frechet_distance, kid
from dae_gen.metrics.inception import InceptionFeatures, quantize
from dae_gen.metrics.precision_recall import knn_radii, manifold_coverage, precision_recall
from dae_gen.metrics.toy import (
    compare_with_exact,
    mmd_rbf,
    mode_weights,
    nearest_neighbour_distances,
    sliced_wasserstein,
)

__all__ = ["FIDMonitor", "InceptionFeatures", "compare_with_exact", "dataset_reference", "evaluate_samples",
           "frechet_distance", "kid", "knn_radii", "manifold_coverage", "mmd_rbf", "mode_weights",
           "nearest_neighbour_distances", "precision_recall", "quantize", "sliced_wasserstein"]
