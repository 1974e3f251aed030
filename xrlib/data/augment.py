"""Variety from few CTs: seeded torchio resampling and augmentations (affine, elastic) of a CT and
its label map, so one CT becomes many distinct patients. Augmentation index 0 is the CT itself."""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio

from xrlib.data.ct import CTVolume


def _subject(ct: CTVolume) -> tio.Subject:
    images = {"image": tio.ScalarImage(tensor=ct.hu[None], affine=ct.affine)}
    if ct.labels is not None:
        images["labels"] = tio.LabelMap(tensor=ct.labels[None].to(torch.int16), affine=ct.affine)
    return tio.Subject(**images)


def _from_subject(subject: tio.Subject, ct: CTVolume) -> CTVolume:
    labels = subject["labels"].data[0].to(torch.int16) if "labels" in subject else None
    return CTVolume(hu=subject["image"].data[0].to(torch.float32), affine=np.asarray(subject["image"].affine),
                    source=ct.source, labels=labels)


def resample_ct(ct: CTVolume, spacing_mm: float | None) -> CTVolume:
    """The CT (and labels, nearest neighbour) resampled to isotropic ``spacing_mm``; None: unchanged."""
    if not spacing_mm:
        return ct
    return _from_subject(tio.Resample(float(spacing_mm))(_subject(ct)), ct)


def augment_ct(ct: CTVolume, index: int, seed: int, max_rotation_deg: float = 4.0, max_scale: float = 0.06,
               max_displacement_mm: float = 8.0) -> CTVolume:
    """The ``index``-th seeded variant of ``ct``: random affine (scale, rotation) then elastic
    deformation (7 control points per axis; skipped when ``max_displacement_mm`` is 0).
    Index 0 returns ``ct`` unchanged."""
    if index == 0:
        return ct
    transforms = [tio.RandomAffine(scales=max_scale, degrees=max_rotation_deg, translation=0,
                                   default_pad_value=-1000.0)]
    if max_displacement_mm > 0:
        transforms.append(tio.RandomElasticDeformation(num_control_points=7, max_displacement=max_displacement_mm,
                                                       locked_borders=2))
    transform = tio.Compose(transforms)
    with torch.random.fork_rng():
        torch.manual_seed(int(seed) * 100003 + int(index))
        subject = transform(_subject(ct))
    return _from_subject(subject, ct)
