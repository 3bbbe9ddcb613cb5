"""FID/KID on TF-Inception features (with cached reference statistics) and distances for 2-D toys."""

from dae_gen.metrics.evaluate import FIDMonitor, dataset_reference, evaluate_samples
from dae_gen.metrics.fid import frechet_distance, kid
from dae_gen.metrics.inception import InceptionFeatures, quantize
from dae_gen.metrics.toy import (
    compare_with_exact,
    mmd_rbf,
    mode_weights,
    nearest_neighbour_distances,
    sliced_wasserstein,
)

__all__ = ["FIDMonitor", "InceptionFeatures", "compare_with_exact", "dataset_reference", "evaluate_samples",
           "frechet_distance", "kid", "mmd_rbf", "mode_weights", "nearest_neighbour_distances", "quantize",
           "sliced_wasserstein"]
