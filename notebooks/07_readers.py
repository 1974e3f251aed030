# %% [markdown]
# # 07 Readers: agreement and MRMC statistics
#
# The paper's claim rests on expert assessment. This stage (a) reproduces published agreement and MRMC results with `xrlib.stats`, (b) runs an MRMC ROC analysis on ratings by **virtual readers** (channelized Hotelling observers) of our images, DRR vs restored, and (c) analyses any human rating files placed under `ratings/` (one CSV per reader from the rating widget, plus the deck's `key.csv`) with the same code. It also writes a blinded deck for a human study.

# %% tags=["parameters"]
readers = None

# %%
import json

import matplotlib.pyplot as plt  # inline in the Lab; every figure is also saved to a file
import pandas as pd

from xrlib import readerstudy, stats
from xrlib.eval import observers
from xrlib.io import write_csv_atomic, write_json_atomic
from xrlib.params import stage_settings
from xrlib.paths import project_root
from xrlib.stages import path

cfg = stage_settings('readers', readers)
root = project_root()
out = path('07_readers.folder')
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## (a) Published results reproduced
#
# Every value from Fleiss (1971), Shrout and Fleiss (1979), Krippendorff (2011) and the Iowa OR-DBM MRMC 2.51 analysis of the Van Dyke et al. (1993) data, ours beside the published number (`agrees`: rounds to it at the printed precision).

# %%
published = stats.reproduce_published(path('reference'))
write_csv_atomic(out / 'reference_reproduced.csv', published)
print(f"{published['agrees'].sum()} of {len(published)} published values reproduced")
published.groupby('source')['agrees'].agg(['sum', 'count'])

# %%
vandyke = pd.read_csv(path('reference') / 'vandyke_dataset02_long.csv')
vandyke_or = stats.or_analysis(vandyke, alpha=cfg.alpha)
vandyke_tests, vandyke_differences, vandyke_cis = stats.or_summary(vandyke_or)
vandyke_tests

# %% [markdown]
# ## (b) Virtual readers on our images
#
# ROIs at each nodule's centre in the DRR with the nodule (signal present) and in the same DRR without it (signal absent), for every condition whose images exist. Without enough pipeline images the stage says so and uses synthetic lumpy-background phantoms, so the analysis always runs. **These ratings come from model observers, not people.**

# %%
images = {condition: (str(path('01_drr.drr')), str(path('01_drr.drr_nodule_free'))) if config is None else
          (str(path('05_restore.restored_drr', config=config)), str(path('05_restore.restored_drr_nodule_free', config=config)))
          for condition, config in cfg.conditions.items()}  # with and without the nodules
table, image_source = observers.reader_images(path('01_drr.nodules'), images, cfg.min_cases_per_condition,
                                              out / 'phantoms', cfg.synthetic.n_cases,
                                              cfg.synthetic.amplitude_by_condition, cfg.seed)
print('virtual readers rate', image_source, '\n', table.groupby('condition')['truth'].value_counts().unstack())

# %%
roi_sets = observers.rois_from_condition_table(table, cfg.roi_size_px)
cho = cfg.cho
virtual = observers.virtual_readings(roi_sets, cfg.n_virtual_readers, cfg.seed, cfg.train_fraction,
                                     cho.n_channels, cho.width_px, cho.internal_noise)
virtual_or = stats.or_analysis(virtual, alpha=cfg.alpha)
virtual_tests, virtual_differences, virtual_cis = stats.or_summary(virtual_or)
d_prime = observers.observer_detectability(roi_sets, cfg.seed, cfg.train_fraction, cho.n_channels, cho.width_px)
display(virtual_or.auc.round(3), virtual_tests, d_prime)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for (modality, reader), reading in virtual.groupby(['modality', 'reader']):
    points = stats.roc_curve_points(reading['truth'], reading['rating'])
    axes[0].plot(points['fpf'], points['tpf'], color=f"C{sorted(roi_sets).index(modality)}", alpha=0.6)
axes[0].set(xlabel='false-positive fraction', ylabel='true-positive fraction', title='ROC, virtual readers (colour = condition)')
forest = virtual_cis[virtual_cis['analysis'] == 'random readers, random cases'].reset_index(drop=True)
axes[1].errorbar(forest['auc'], forest.index, xerr=[forest['auc'] - forest['ci_low'], forest['ci_high'] - forest['auc']], fmt='o')
axes[1].set(yticks=forest.index, yticklabels=forest['modality'], xlabel='AUC (95% CI, random readers and cases)', title='virtual readers')
fig.tight_layout()
fig.savefig(out / 'virtual_readers_roc_forest.png', dpi=120)

# %% [markdown]
# ## A blinded deck for a human study
#
# The images of (b) in random order under opaque ids; `key.csv` stays with the analyst. A reader rates in the Lab with the form below: their name, Start, then one case at a time, each answer written at once to `ratings/NAME.csv` under the project root (running or rating here changes no pipeline input but that ratings file). Copy `key.csv` beside the readers' files in `ratings/`. Every rating records the id of the deck it was made against (`deck_id`, a fingerprint of what readers see), so ratings are only ever joined with their own deck's key: rows made for another deck are reported, never re-mapped.

# %%
conditions = table.rename(columns={'case_id': 'source_id'})[['source_id', 'condition', 'image_path', 'truth']]
deck, key = readerstudy.build_deck(conditions, seed=cfg.seed)
readerstudy.write_deck(deck, key, out / 'deck')
deck_note = readerstudy.study_deck_note(key, path('ratings'))
print(f"deck {key.deck_id[0]}: {len(deck)} cases", f"\nnote: {deck_note}" if deck_note else '')

# %%
# in the Lab: type your name, press Start and rate; each answer is written at once to ratings/NAME.csv
readerstudy.RatingSession(deck, path('ratings')).show()

# %% [markdown]
# ## (c) Human ratings under ratings/

# %%
ratings, problems, _ = readerstudy.load_ratings_folder(path('ratings'))
human = {'n_readers': int(ratings['reader'].nunique()), 'n_ratings': len(ratings), 'n_bad_rows': len(problems)}
write_csv_atomic(out / 'human_rating_problems.csv', problems)  # every unusable row or file, by line
if ratings.empty:
    print('no usable human ratings under', path('ratings').relative_to(root), f'({len(problems)} problem rows)')
else:
    yes_no = [q.key for q in readerstudy.QUESTIONS if q.is_yes_no]
    proportions = pd.concat([stats.proportion_table(ratings, ['condition'], q, cfg.alpha).assign(question=q) for q in yes_no])
    agreement = readerstudy.question_agreement(ratings)
    write_csv_atomic(out / 'human_proportions.csv', proportions)
    write_csv_atomic(out / 'human_agreement.csv', agreement)
    human_or = stats.or_analysis(readerstudy.ratings_to_readings(ratings), alpha=cfg.alpha)
    human_tests, human_differences, human_cis = stats.or_summary(human_or)
    write_csv_atomic(out / 'human_mrmc_tests.csv', human_tests)
    write_csv_atomic(out / 'human_mrmc_modality_cis.csv', human_cis)
    display(proportions, agreement, human_tests)
human

# %%
for name, frame in {'vandyke_mrmc_tests': vandyke_tests, 'vandyke_mrmc_differences': vandyke_differences,
                     'vandyke_mrmc_modality_cis': vandyke_cis, 'virtual_readings': virtual,
                     'virtual_mrmc_tests': virtual_tests, 'virtual_mrmc_differences': virtual_differences,
                     'virtual_mrmc_modality_cis': virtual_cis, 'virtual_d_prime': d_prime}.items():
    write_csv_atomic(out / f'{name}.csv', frame)
write_json_atomic(out / 'summary.json', {
    'published_values_reproduced': int(published['agrees'].sum()), 'published_values': len(published),
    'virtual_readers': {'note': 'model observers (CHO with internal noise), not human readers',
                        'image_source': image_source, 'auc': virtual_or.auc.mean(axis=1).to_dict(),
                        'tests': json.loads(virtual_tests.to_json(orient='records')), 'notes': virtual_or.notes},
    'human': human, 'deck': {'deck_id': key.deck_id[0], 'note': deck_note}})
