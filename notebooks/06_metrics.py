# %% [markdown]
# # 06 Metrics: the paper's table, realism against real X-rays, nodule preservation
#
# Everything is computed by `xrlib.eval` on display images in [0, 1] (**data range 1.0** for PSNR, SSIM and MS-SSIM, all from torchmetrics).
#
# 1. **The paper's table**: held-out HQ X-rays degraded by MUNIT-LQ and DDPM-LQ, scored for the LQ input itself (bicubic to the HQ grid), DiffusionXRay (one model per LQ generator: `diffusionxray_munit` on MUNIT-LQ inputs, `diffusionxray_ddpm` on DDPM-LQ inputs) and the bicubic-trained baseline (on both); 95 % bootstrap intervals resample the held-out *units* and paired Wilcoxon and t-tests use per-unit means (Holm-adjusted); beside the paper's published values. The unit is the patient, or an image tile when the data hold too few patients to hold any out (`split_unit` in every table and in metrics.json: a tile-level hold-out is not a patient-level one).
# 2. **Realism** of raw and restored DRRs against real X-rays, with no downloaded network: radial power spectrum distance, noise power spectrum, 10-90 % edge rise distance, intensity-histogram Wasserstein distance. FID/KID only with feature-extractor weights you supply.
# 3. **Nodule preservation**, per inserted nodule: contrast, CNR and NPW matched-filter d' before and after restoration, the contrast kept and peak shift of the nodule's own signal (restored with minus without the nodule, same seed), and the nodules the restoration lost.

# %% tags=["parameters"]
metrics = None

# %%
import json

import pandas as pd

from xrlib.eval.fid import frechet_and_kernel_distance, inception_feature_extractor
from xrlib.eval.images import DATA_RANGE, load_image_batch
from xrlib.eval.nodules import LostRule, nodule_image_loader, nodule_preservation_table, summarise_nodules
from xrlib.eval.quality import quality_table_from_pairs
from xrlib.eval.images import resize_images
from xrlib.eval.realism import (high_frequency_power_fraction, low_pass_correlation, realism_table, sample_paths,
                                 spectra_table, summarise_realism)
from xrlib.paper import PUBLISHED_CITATION, beside_published
from xrlib.stats.units import paired_method_tests, statistical_unit, summarise_metrics
from xrlib.errors import ConfigError
from xrlib.io import write_csv_atomic, write_json_atomic
from xrlib.data.pairs import read_pairs
from xrlib.params import stage_settings
from xrlib.paths import project_root
from xrlib.stages import path

cfg = stage_settings('metrics', metrics)
root = project_root()
out = path('06_metrics.folder')
print('data range of every image metric:', DATA_RANGE)

# %% [markdown]
# ## 1. The paper's table

# %%
pairs = read_pairs(path('03_lq_munit.pairs'))
restored_test = {method: str(path('05_restore.restored_test', config=config)) for method, config in cfg.restored_test.items()}
quality = quality_table_from_pairs(pairs, restored_test, root, cfg.split, cfg.degradations)
write_csv_atomic(out / 'image_quality.csv', quality)
unit_column, split_unit = statistical_unit(quality)
print('held-out unit:', split_unit)
quality.groupby(['degradation', 'method']).agg(n_images=('image_id', 'size'), n_units=(unit_column, 'nunique'))

# %%
summary = summarise_metrics(quality, ['psnr_db', 'ssim', 'ms_ssim'], ['degradation', 'method'],
                              cfg.bootstrap_resamples, cfg.confidence, cfg.seed)
tests = paired_method_tests(quality, ['psnr_db', 'ssim', 'ms_ssim'], [tuple(c) for c in cfg.comparisons])
beside = beside_published(summary)
for name, frame in {'quality_summary': summary, 'paired_tests': tests, 'quality_vs_published': beside}.items():
    write_csv_atomic(out / f'{name}.csv', frame)
print('published values:', PUBLISHED_CITATION)
beside

# %%
tests

# %% [markdown]
# ## 2. Realism of raw and restored DRRs against real X-rays

# %%
real = cfg.realism
xrays = pd.read_csv(path('00_data.xray_manifest'))
nodules = pd.read_csv(path('01_drr.nodules'))
drr_ids = list(dict.fromkeys(nodules['drr_id'].astype(str)))
paths = {
    'real_xray': [root / p for p in xrays['path']],
    'drr': [path('01_drr.drr', drr_id=i) for i in drr_ids],
    'restored_drr': [path('05_restore.restored_drr', config=cfg.restored_drr_config, drr_id=i) for i in drr_ids],
}
image_sets = {name: load_image_batch(sample_paths(p, real.max_images, cfg.seed), real.size_px)
              for name, p in paths.items()}
{name: tuple(images.shape) for name, images in image_sets.items()}

# %%
realism = realism_table(image_sets, 'real_xray', real.n_bins, real.roi_size_px,
                          real.nps_keep_fraction, real.edge_quantile)
spectra = spectra_table(image_sets, real.n_bins)
realism_summary = summarise_realism(realism, image_sets, 'real_xray', real.n_bins)
spectra_wide = spectra.pivot(index='frequency_cycles_per_px', columns='set', values='log10_power_mean').reset_index()
for name, frame in {'realism': realism, 'realism_summary': realism_summary, 'spectra': spectra,
                    'spectra_log10_wide': spectra_wide}.items():
    write_csv_atomic(out / f'{name}.csv', frame)
realism_summary

# %% [markdown]
# ### Fine detail and anatomy
#
# High-frequency power fraction (power above 0.25 cycles/px over all but DC, each image on its own grid): a DRR lacks fine texture by orders of magnitude, a restoration should bring it into the range of real films. Anatomy kept: Pearson correlation of the Gaussian low-passes (sigma 4 px at the restored size) of each restored DRR and its DRR brought to the same grid (the restorer's input, upsampled).

# %%
drrs_full = load_image_batch(paths['drr'])
restored_full = load_image_batch(paths['restored_drr'])
drrs_on_grid = resize_images(drrs_full, tuple(restored_full.shape[-2:]), 'bicubic')
real_full = [load_image_batch([p]) for p in sample_paths(paths['real_xray'], real.max_images, cfg.seed)]
high_frequency = pd.DataFrame({
    'set': ['real_xray', 'drr', 'restored_drr'],
    'high_frequency_fraction_median': [float(pd.Series([high_frequency_power_fraction(x)[0] for x in real_full]).median()),
                                       float(pd.Series(high_frequency_power_fraction(drrs_full)).median()),
                                       float(pd.Series(high_frequency_power_fraction(restored_full)).median())]})
anatomy = pd.DataFrame({'drr_id': drr_ids, 'low_pass_correlation': low_pass_correlation(restored_full, drrs_on_grid, 4.0)})
write_csv_atomic(out / 'high_frequency.csv', high_frequency)
write_csv_atomic(out / 'anatomy.csv', anatomy)
display(high_frequency, anatomy.describe().T)

# %%
try:
    extractor = inception_feature_extractor(cfg.fid_weights_path)
    fid = {name: frechet_and_kernel_distance(image_sets['real_xray'], image_sets[name], extractor, seed=cfg.seed)
           for name in ('drr', 'restored_drr')}
except ConfigError as reason:
    fid = None
    print('FID/KID skipped:', reason)
fid

# %% [markdown]
# ## 3. Nodule preservation

# %%
rule = LostRule(cfg.nodules.min_contrast_ratio, cfg.nodules.max_peak_shift_radii)
loader = nodule_image_loader(root, str(path('01_drr.drr')), str(path('01_drr.drr_nodule_free')),
                             str(path('05_restore.restored_drr', config=cfg.restored_drr_config)),
                             str(path('05_restore.restored_drr_nodule_free', config=cfg.restored_drr_config)))
preserved = nodule_preservation_table(nodules, loader, rule, cfg.nodules.n_background, cfg.seed)
write_csv_atomic(out / 'nodules.csv', preserved)
print(f"{int(preserved['lost'].sum())} of {len(preserved)} nodules lost by restoration ({rule})")
preserved[['drr_id', 'nodule_id', 'contrast_drr', 'contrast_restored', 'cnr_drr', 'cnr_restored',
           'dprime_drr', 'dprime_restored', 'signal_kept', 'signal_peak_shift_px', 'lost']]

# %% [markdown]
# ## DVC metrics

# %%
ours = summary.pivot_table(index=['degradation', 'method'], columns='metric', values='mean')
write_json_atomic(path('06_metrics.metrics'), {
    'data_range': DATA_RANGE,
    'split_unit': split_unit,
    'quality': {f'{d}/{meth}': row.to_dict() for (d, meth), row in ours.iterrows()},
    'realism': realism_summary.set_index('set').to_dict(orient='index'),
    'fid_kid': fid,
    'nodules': summarise_nodules(preserved),
    'high_frequency_fraction': high_frequency.set_index('set')['high_frequency_fraction_median'].to_dict(),
    'anatomy_low_pass_correlation_min': float(anatomy['low_pass_correlation'].min()),
})
print(json.dumps(json.loads(path('06_metrics.metrics').read_text())['nodules'], indent=1))
