# %% [markdown]
# # 08 Figures: the paper's figures and tables
#
# Every figure is drawn by `xrlib.figures` in one style and written as PDF and PNG under `paper/figures`; every table as CSV and LaTeX under `paper/tables`. The numbers come from 06_metrics (`outputs/06_metrics`) and 07_readers (`outputs/07_readers`); the images from the pipeline's outputs. `paper/manuscript.md` cites each file and the stage that makes it.

# %% tags=["parameters"]
figures = None
metrics = None

# %%
import json

import pandas as pd

from xrlib import figures as f
from xrlib.eval import checks
from xrlib.eval.nodules import nodule_bbox
from xrlib.models.restorer import perception_distortion
from xrlib.paper import DEGRADATION_LABELS, METHOD_LABELS
from xrlib import stats
from xrlib.io import load_png, write_json_atomic
from xrlib.params import stage_settings
from xrlib.paths import project_root
from xrlib.stages import path

cfg = stage_settings('figures', figures)
mcfg = stage_settings('metrics', metrics)
root = project_root()
results = path('06_metrics.folder')
readers = path('07_readers.folder')
f.apply_style()
quality = pd.read_csv(results / 'image_quality.csv')
pairs = pd.read_csv(path('03_lq_munit.pairs'))
nodules = pd.read_csv(results / 'nodules.csv')
labels = {**METHOD_LABELS, **DEGRADATION_LABELS, **cfg.labels}
written = {}

# %% [markdown]
# ## Figure 1: the pipeline on real examples
# A held-out HQ X-ray, its two LQ twins (MUNIT-LQ, DDPM-LQ) and its DiffusionXRay restoration; then a DRR with an inserted nodule and its restoration (nodule enlarged).

# %%
test_pairs = pairs[pairs['split'] == mcfg.split]
example = test_pairs[test_pairs['generator'] == 'munit'].iloc[0]
twins = test_pairs[test_pairs['hq_path'] == example['hq_path']].set_index('generator')
nodule = nodules.sort_values('dprime_drr', ascending=False).iloc[0]
drr = load_png(path('01_drr.drr', drr_id=nodule['drr_id']))
restored_drr = load_png(path('05_restore.restored_drr', config=mcfg.restored_drr_config, drr_id=nodule['drr_id']))
row = [load_png(root / example['hq_path']), load_png(root / twins.loc['munit', 'lq_path']), load_png(root / twins.loc['ddpm', 'lq_path']),
       load_png(path('05_restore.restored_test', config=mcfg.restored_test['diffusionxray'].format(generator='munit'), pair_id=example['pair_id'])), drr, restored_drr]
fig = f.image_grid([row], column_titles=['HQ X-ray', 'MUNIT-LQ', 'DDPM-LQ', 'restored', 'DRR', 'restored DRR'],
                   bboxes=[[None, None, None, None, nodule_bbox(nodule), nodule_bbox(nodule, nodule['grid_scale'])]])
written['fig1_pipeline'] = f.save_figure(fig, 'fig1_pipeline')

# %% [markdown]
# ## Figure 2: LQ generators
# Held-out HQ X-rays and their LQ twins by each generator.

# %%
generators = [g for g in cfg.generators if g in set(test_pairs['generator'])]
cases = test_pairs.drop_duplicates('hq_path').head(cfg.gallery_cases)
by_generator = test_pairs.set_index(['hq_path', 'generator'])['lq_path']
rows = [[load_png(root / hq)] + [load_png(root / by_generator[(hq, g)]) for g in generators] for hq in cases['hq_path']]
fig = f.image_grid(rows, column_titles=['HQ'] + [labels.get(g, g) for g in generators])
written['fig2_lq_generators'] = f.save_figure(fig, 'fig2_lq_generators')

# %% [markdown]
# ## Figure 3: restoration of DRRs, with nodule zooms
# The nodules with the lowest contrast kept by restoration first (lost ones, if any, at the top): DRR, nodule-free DRR, restored DRR and restored nodule-free DRR (same seed: what differs between the last two is the nodule's own restored signal, which 06's lost rule measures).

# %%
ranked = nodules.assign(kept=nodules['contrast_restored'] / nodules['contrast_drr']).sort_values(['lost', 'kept'], ascending=[False, True])
shown = ranked.head(cfg.gallery_cases)
rows = [[load_png(path('01_drr.drr', drr_id=n['drr_id'])), load_png(path('01_drr.drr_nodule_free', drr_id=n['drr_id'])),
         load_png(path('05_restore.restored_drr', config=mcfg.restored_drr_config, drr_id=n['drr_id'])),
         load_png(path('05_restore.restored_drr_nodule_free', config=mcfg.restored_drr_config, drr_id=n['drr_id']))]
        for _, n in shown.iterrows()]
boxes = [[nodule_bbox(n), nodule_bbox(n), nodule_bbox(n, n['grid_scale']), nodule_bbox(n, n['grid_scale'])] for _, n in shown.iterrows()]
titles = [f"{n.nodule_id}{' (lost)' if n.lost else ''}" for n in shown.itertuples()]  # nodule ids name their DRR
fig = f.image_grid(rows, column_titles=['DRR', 'nodule-free DRR', 'restored DRR', 'restored nodule-free DRR'], row_titles=titles, bboxes=boxes)
written['fig3_restoration_gallery'] = f.save_figure(fig, 'fig3_restoration_gallery')

# %% [markdown]
# ## Figure 4: distributions of PSNR, SSIM and MS-SSIM per method and test set

# %%
fig = f.metric_distributions(quality, ['psnr_db', 'ssim', 'ms_ssim'], 'method', panel='degradation',
                             labels={**labels, 'psnr_db': 'PSNR (dB)', 'ssim': 'SSIM', 'ms_ssim': 'MS-SSIM'})
written['fig4_quality_distributions'] = f.save_figure(fig, 'fig4_quality_distributions')

# %% [markdown]
# ## Figure 5: ours beside the published values (95 % CIs resampling patients)

# %%
beside = pd.read_csv(results / 'quality_vs_published.csv')
beside['label'] = beside['degradation'].map(labels) + ' | ' + beside['method'].map(labels)
for metric, name in (('psnr_db', 'PSNR (dB)'), ('ssim', 'SSIM')):
    rows = beside.rename(columns={f'{metric}_ours': 'mean', f'{metric}_ours_ci_low': 'ci_low', f'{metric}_ours_ci_high': 'ci_high'})
    fig = f.forest_plot(rows, 'label', published=f'{metric}_published', xlabel=name, colour_by='method')
    written[f'fig5_quality_vs_published_{metric}'] = f.save_figure(fig, f'fig5_quality_vs_published_{metric}')

# %% [markdown]
# ## Figures 6 and 7: realism against real X-rays
# Radial power spectra (mean, 10-90 % band) and per-image realism measures.

# %%
fig = f.spectra_plot(pd.read_csv(results / 'spectra.csv'), labels=labels)
written['fig6_spectra'] = f.save_figure(fig, 'fig6_spectra')
realism = pd.read_csv(results / 'realism.csv')
columns = ['spectrum_distance', 'edge_rise_distance_px', 'intensity_wasserstein', 'nps_mean_frequency_cycles_per_px']
fig = f.metric_distributions(realism, columns, 'set', labels={**labels, 'spectrum_distance': 'log-spectrum distance (decades)',
                             'edge_rise_distance_px': '10-90% edge rise (px)', 'intensity_wasserstein': 'histogram W1',
                             'nps_mean_frequency_cycles_per_px': 'NPS mean frequency (cycles/px)'})
written['fig7_realism'] = f.save_figure(fig, 'fig7_realism')

# %% [markdown]
# ## Figure 8: nodule preservation
# NPW matched-filter d' and local contrast of every inserted nodule, before (DRR) and after restoration; lost nodules marked.

# %%
for column, name in (('dprime', "NPW d'"), ('contrast', 'local contrast')):
    fig = f.before_after_scatter(nodules, f'{column}_drr', f'{column}_restored', flag='lost',
                                 xlabel=f'{name}, DRR', ylabel=f'{name}, restored DRR')
    written[f'fig8_nodule_{column}'] = f.save_figure(fig, f'fig8_nodule_{column}')

# %% [markdown]
# ## Figure 9: reader study (07_readers)
# ROC of the virtual readers (model observers, not people) pooled per condition, and their AUCs with 95 % CIs (random readers, random cases).

# %%
readings = pd.read_csv(readers / 'virtual_readings.csv')
cis = pd.read_csv(readers / 'virtual_mrmc_modality_cis.csv')
cis = cis[cis['analysis'] == cfg.mrmc_analysis].reset_index(drop=True)
auc = dict(zip(cis['modality'], cis['auc']))
curves = {modality: tuple(stats.roc_curve_points(r['truth'], r['rating'])[['fpf', 'tpf']].to_numpy().T)
          for modality, r in readings.groupby('modality')}
written['fig9_readers_roc'] = f.save_figure(f.roc_plot(curves, auc, labels), 'fig9_readers_roc')
fig = f.forest_plot(cis.rename(columns={'auc': 'mean'}).assign(label=cis['modality'].map(lambda c: labels.get(c, c))), 'label', xlabel='AUC, virtual readers (95% CI)', colour_by='modality')
written['fig9_readers_auc'] = f.save_figure(fig, 'fig9_readers_auc')

# %% [markdown]
# ## Figure 10: fidelity against fine scale, by restore steps
# On the validation pairs 05 chose the step counts from: each restorer's mean SSIM and PSNR against the median spectrum distance of its restorations to their HQ images, through the counts of `restore.indi_steps_sweep` (0: the LQ input). Boxed: the count 05 restored the test pairs with (the fidelity end); starred: the DRRs' (the most steps within `restore.drr_psnr_budget_db` of it). Diffusion restorers take fixed steps and are not swept.

# %%
sweep = pd.read_csv(path('05_restore.steps_sweep'))
if len(sweep):
    chosen_steps = json.loads(path('05_restore.chosen_steps').read_text())
    fig = f.perception_distortion_plot(perception_distortion(sweep), labels, chosen_steps)
    written['fig10_perception_distortion'] = f.save_figure(fig, 'fig10_perception_distortion')

# %% [markdown]
# ## Tables

# %%
summary = pd.read_csv(results / 'quality_summary.csv')
tests = pd.read_csv(results / 'paired_tests.csv')
metrics_json = json.loads(path('06_metrics.metrics').read_text())
tables = {
    'table1_quality_vs_published': (f.paper_quality_table(beside, labels, labels),
        'PSNR, SSIM and MS-SSIM (data range 1) on held-out HQ X-rays; ours with 95% CIs resampling patients, beside the published values (Goyal et al.).'),
    'table2_paired_tests': (tests[['degradation', 'metric', 'method_a', 'method_b', 'n_units', 'split_unit', 'mean_difference', 'wilcoxon_p_holm', 't_p_holm']],
        'Paired comparisons on per-patient means: Wilcoxon signed-rank and paired t-test, Holm-adjusted.'),
    'table3_realism': (pd.read_csv(results / 'realism_summary.csv'), 'Realism against real X-rays: medians per image set.'),
    'table4_nodules': (pd.DataFrame([metrics_json['nodules']]), 'Nodule preservation by restoration.'),
    'table5_readers': (cis[['modality', 'auc', 'ci_low', 'ci_high']], 'Virtual readers (model observers): AUC with 95% CI.'),
}
for name, (frame, caption) in tables.items():
    written[name] = f.write_table(frame, name, caption=caption)
{name: [p.name for p in paths.values()] for name, paths in written.items()}

# %% [markdown]
# ## Does this run show the paper's effect?
#
# Each check is a measured value beside its bar (`xrlib.eval.checks`): LQ twins keep the anatomy and reach the DRR domain (03, held-out images); DiffusionXRay beats the LQ input and the bicubic-trained baseline in PSNR and SSIM on both test sets (06, Holm-adjusted paired Wilcoxon over held-out units); restored DRRs are nearer real X-rays than raw DRRs, keep their nodules of 8 mm and more, and do not lower the virtual readers' AUC by more than 0.05; restored DRRs keep their input's anatomy. Written to `paper/tables/table6_method_checks` and `outputs/metrics/08_method_checks.json`.

# %%
translation = pd.DataFrame([{'generator': g, **v} for g, v in json.loads(path('03_lq_munit.translation_checks').read_text()).items()])
virtual_auc = json.loads((readers / 'summary.json').read_text())['virtual_readers']['auc']
method_checks = checks.checks_table(
    checks.twin_checks(translation, [g for g in ('ddpm', 'munit') if g in set(translation['generator'])]),
    checks.beats_checks(tests, mcfg.degradations),
    checks.realism_check(pd.read_csv(results / 'realism_summary.csv')),
    checks.nodules_kept_check(nodules),
    checks.reader_auc_check(virtual_auc),
    checks.anatomy_check(pd.read_csv(results / 'anatomy.csv')['low_pass_correlation']),
)
written['table6_method_checks'] = f.write_table(method_checks, 'table6_method_checks',
    caption="The method's checks: each measured value beside its bar (xrlib.eval.checks).")
write_json_atomic(path('08_figures.method_checks'), {'passed': int(method_checks['passed'].sum()), 'checks': len(method_checks),
                                                     'rows': json.loads(method_checks.to_json(orient='records'))})
method_checks

# %% [markdown]
# ## Which of the paper's claims does this run support?
#
# Each claim of the paper (DiffusionXRay beats the bicubic-trained DDPM on MUNIT-LQ and DDPM-LQ inputs in PSNR and SSIM; nodules stay visible; lung fields clearer; the mild noise increase the paper names as a limitation) with its measured evidence, interval, test and one verdict: supported, not supported, or not measurable at this scale, with why (`xrlib.eval.claims`). Written to `paper/claims.md` and `outputs/metrics/08_claims.json`.

# %%
from xrlib.eval.claims import ClaimCriteria, claims_from_tables, write_claims

criteria = ClaimCriteria(confidence=mcfg.confidence, bootstrap_resamples=mcfg.bootstrap_resamples, seed=mcfg.seed)
claims = claims_from_tables(results, criteria)
write_claims(claims, path('08_figures.claims'), path('08_figures.claims_metrics'), criteria, sources=' (outputs/06_metrics)')
claims[['claim', 'value', 'ci_low', 'ci_high', 'p', 'n', 'verdict', 'why']]
