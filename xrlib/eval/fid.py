"""Optional FID / KID (torchmetrics) with an Inception-v3 whose weights the user supplies (nothing is downloaded)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from xrlib.errors import ConfigError, DataError
from xrlib.eval.images import check_batch


class _InceptionOnGreyscale(torch.nn.Module):
    """torch-fidelity's FID Inception-v3 (pool3, 2048 features) on (B, 1, H, W) images in [0, 1]."""

    num_features = 2048

    def __init__(self, weights_path: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights_path)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        as_bytes = (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).expand(-1, 3, -1, -1)
        return self.inception(as_bytes).reshape(images.shape[0], -1)


def inception_feature_extractor(weights_path: str | os.PathLike | None) -> torch.nn.Module:
    """The FID Inception-v3 network loaded from weights the user supplies (nothing is downloaded).

    ``weights_path`` is torch-fidelity's ``pt_inception-2015-12-05-6726825d.pth``; it needs the
    ``torch-fidelity`` package. Raises ConfigError, saying what to do, when either is missing.
    """
    if not weights_path:
        raise ConfigError(
            "FID/KID need Inception-v3 FID weights that you supply: download "
            "pt_inception-2015-12-05-6726825d.pth (torch-fidelity release) and set metrics.fid_weights_path "
            "in params.yaml; leave it null to skip FID/KID"
        )
    path = Path(weights_path)
    if not path.is_file():
        raise ConfigError(f"metrics.fid_weights_path = {path}: no such file; point it at the Inception-v3 FID weights")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as error:
        raise ConfigError("FID/KID with Inception-v3 need torch-fidelity: pip install torch-fidelity==0.3.0") from error
    return _InceptionOnGreyscale(path)


def frechet_and_kernel_distance(
    real: torch.Tensor,
    generated: torch.Tensor,
    feature_extractor: torch.nn.Module,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """FID and KID (torchmetrics) between two sets in the features of ``feature_extractor``.

    ``feature_extractor`` maps a (B, 1, H, W) batch in [0, 1] to (B, F) features and has an int
    attribute ``num_features`` (see :func:`inception_feature_extractor`). KID uses random subsets
    of ``kid_subset_size`` (default: the smaller set's size), drawn reproducibly from ``seed``.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, generated = check_batch(real, "real"), check_batch(generated, "generated")
    if not isinstance(getattr(feature_extractor, "num_features", None), int):
        raise ConfigError("the feature extractor needs an int attribute num_features (its output width)")
    if min(len(real), len(generated)) < 2:
        raise DataError("FID/KID need at least 2 images in each set")
    subset_size = kid_subset_size or min(len(real), len(generated))
    fid = FrechetInceptionDistance(feature=feature_extractor)
    with warnings.catch_warnings():  # torchmetrics warns that KID keeps all features: intended here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=feature_extractor, subsets=kid_subsets, subset_size=subset_size)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for metric in (fid, kid):
            metric.update(real, real=True)
            metric.update(generated, real=False)
        kid_mean, kid_std = kid.compute()
        return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}
