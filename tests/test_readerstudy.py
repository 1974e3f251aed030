"""The rating kit without a browser: deck building, the widget's callbacks, crash and resume, the validator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import xrlib.io

from xrlib import readerstudy
from xrlib.errors import DataError, DegenerateDataWarning
from xrlib.io import save_png16
from xrlib.readerstudy import (
    QUESTION_KEYS, RATING_COLUMNS, RatingWidget, append_answer, build_deck, deck_fingerprint, load_ratings_folder,
    ratings_to_readings, read_ratings, remaining_cases, validate_ratings, write_deck,
)
from xrlib.stats import or_analysis

CONDITIONS = ("drr", "baseline", "diffusionxray")


@pytest.fixture()
def condition_table(tmp_path) -> pd.DataFrame:
    """Four source cases (two with a nodule) under three conditions, as tiny PNG files."""
    rows = []
    rng = np.random.default_rng(1)
    for source in range(4):
        reference = tmp_path / f"src{source}_drr.png"
        for condition in CONDITIONS:
            path = tmp_path / f"src{source}_{condition}.png"
            save_png16(path, rng.uniform(size=(8, 8)))
            rows.append({"source_id": f"src{source}", "condition": condition, "image_path": str(path),
                         "truth": int(source < 2), "reference_path": str(reference)})
    return pd.DataFrame(rows)


def full_answers(confidence: int = 50) -> dict:
    return {"nodule_easily_visible": 1, "nodule_confusable": 0, "lung_clarity_improved": 1,
            "noise_increase": 0, "realism": 4, "nodule_confidence": confidence}


def fill_widget(widget: RatingWidget, answers: dict) -> None:
    for key, value in answers.items():
        widget.inputs[key].value = value


def test_deck_is_blinded_randomised_and_keyed(condition_table):
    deck, key = build_deck(condition_table, seed=3)
    assert list(deck.columns) == ["case_id", "image_path", "reference_path"]
    assert deck["case_id"].is_unique and len(deck) == 12
    # the key restores every (source, condition, truth, image) exactly once
    restored = deck.merge(key, on="case_id")
    pd.testing.assert_frame_equal(
        restored.sort_values(["source_id", "condition"])[["source_id", "condition", "image_path", "truth"]].reset_index(drop=True),
        condition_table.sort_values(["source_id", "condition"])[["source_id", "condition", "image_path", "truth"]].reset_index(drop=True),
    )
    again, _ = build_deck(condition_table, seed=3)
    other, _ = build_deck(condition_table, seed=4)
    assert list(again["image_path"]) == list(deck["image_path"])
    assert list(other["image_path"]) != list(deck["image_path"])
    # case ids are presentation order, so they say nothing about the condition
    assert list(deck["case_id"]) == sorted(deck["case_id"])
    with pytest.raises(DataError, match="truth"):
        build_deck(condition_table.assign(truth=2), seed=0)


def test_widget_records_answers_through_its_callbacks(condition_table, tmp_path):
    deck, key = build_deck(condition_table, seed=0)
    ratings_path = tmp_path / "ratings" / "reader_a.csv"
    widget = RatingWidget(deck, ratings_path, reader="a")
    first = widget.current_case
    assert first == deck["case_id"].iloc[0]
    assert bytes(widget.image.value).startswith(b"\x89PNG") and bytes(widget.reference.value).startswith(b"\x89PNG")

    widget.submit_button.click()  # nothing answered: refused, nothing written
    assert not ratings_path.exists() and "Please answer" in widget.status.value

    fill_widget(widget, full_answers(80))
    widget.submit_button.click()
    saved = read_ratings(ratings_path)
    assert list(saved.columns) == list(RATING_COLUMNS)
    assert saved.loc[0, "case_id"] == first and saved.loc[0, "nodule_confidence"] == "80"
    assert widget.current_case == deck["case_id"].iloc[1]
    # the form is reset for the next case: a yes/no left unanswered is refused
    widget.submit_button.click()
    assert len(read_ratings(ratings_path)) == 1


def test_widget_opens_a_deck_without_references_read_back_from_csv(condition_table, tmp_path):
    deck, _ = build_deck(condition_table.drop(columns="reference_path"), seed=0)
    deck.to_csv(tmp_path / "deck.csv", index=False)
    read_back = pd.read_csv(tmp_path / "deck.csv")  # empty references come back as NaN
    assert read_back["reference_path"].isna().all()
    widget = RatingWidget(read_back, tmp_path / "alice.csv", reader="alice")
    assert bytes(widget.image.value).startswith(b"\x89PNG") and bytes(widget.reference.value) == b""
    # no broken reference image and no question about a reference that is not there
    assert widget.reference_panel.layout.display == "none"
    assert not any("reference" in label.value for label in widget.labels.values())
    fill_widget(widget, full_answers(60))
    widget.submit_button.click()
    assert len(read_ratings(tmp_path / "alice.csv")) == 1


def test_widget_shows_the_reference_and_says_so_only_where_a_case_has_one(condition_table, tmp_path):
    with_reference = condition_table.copy()
    for reference in with_reference["reference_path"].unique():
        save_png16(reference, np.zeros((8, 8)))
    with_reference.loc[with_reference["source_id"] == "src0", "reference_path"] = ""
    deck, _ = build_deck(with_reference, seed=0)
    widget = RatingWidget(deck, tmp_path / "carol.csv", reader="carol", root=tmp_path)
    seen = set()
    while widget.current_case is not None:
        has_reference = bool(deck.set_index("case_id").loc[widget.current_case, "reference_path"])
        compared = [widget.labels[q.key].value for q in readerstudy.QUESTIONS if q.compares]
        assert (widget.reference_panel.layout.display != "none") == has_reference
        assert all(("vs the reference" in label) == has_reference for label in compared)
        if has_reference:
            assert bytes(widget.reference.value).startswith(b"\x89PNG")
        seen.add(has_reference)
        fill_widget(widget, full_answers())
        widget.submit_button.click()
    assert seen == {True, False}


def test_deck_stores_project_relative_paths_and_opens_in_another_folder(condition_table, tmp_path, monkeypatch):
    """A deck made in one checkout opens in another; ratings land under the root whatever the notebook's folder."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    for root in (here, elsewhere):
        (root / "outputs" / "images").mkdir(parents=True)
        (root / "notebooks").mkdir()
        (root / "dvc.yaml").write_text("stages: {}\n")
    table = condition_table.drop(columns="reference_path")
    moved = []
    for source in table["image_path"]:
        name = Path(source).name
        for root in (here, elsewhere):
            (root / "outputs" / "images" / name).write_bytes(Path(source).read_bytes())
        moved.append(str(elsewhere / "outputs" / "images" / name))
    deck, key = build_deck(table.assign(image_path=moved), seed=0, root=elsewhere)
    assert all(p.startswith("outputs/images/") for p in deck["image_path"])
    write_deck(deck, key, elsewhere / "outputs" / "deck")
    (elsewhere / "outputs" / "images").rename(elsewhere / "outputs" / "moved")  # the other checkout is gone

    monkeypatch.delenv("XRLIB_ROOT", raising=False)
    monkeypatch.chdir(here / "notebooks")  # the Lab runs a notebook from its own folder
    copied = pd.read_csv(elsewhere / "outputs" / "deck" / "deck.csv")
    widget = RatingWidget(copied, "ratings/dave.csv", reader="dave")
    assert widget.ratings_path == here / "ratings" / "dave.csv"
    assert bytes(widget.image.value).startswith(b"\x89PNG")
    fill_widget(widget, full_answers())
    widget.submit_button.click()
    assert len(read_ratings(here / "ratings" / "dave.csv")) == 1
    assert not (here / "notebooks" / "ratings").exists()


def test_widget_resumes_after_a_crash_and_finishes(condition_table, tmp_path, monkeypatch):
    deck, _ = build_deck(condition_table, seed=0)
    ratings_path = tmp_path / "reader_b.csv"
    widget = RatingWidget(deck, ratings_path, reader="b")
    for _ in range(2):
        fill_widget(widget, full_answers())
        widget.submit_button.click()
    before = ratings_path.read_bytes()

    # the write of the third answer dies before its final rename: the file keeps its two rows
    def crash(*_args):
        raise OSError("power cut")

    monkeypatch.setattr(xrlib.io.os, "replace", crash)
    fill_widget(widget, full_answers())
    widget.submit_button.click()  # ipywidgets logs the callback's OSError
    monkeypatch.undo()
    assert ratings_path.read_bytes() == before
    assert [p.name for p in tmp_path.glob(".reader_b*")] == []  # no temporary file left behind

    resumed = RatingWidget(deck, ratings_path, reader="b")
    assert resumed.current_case == deck["case_id"].iloc[2]
    assert remaining_cases(deck, ratings_path) == list(deck["case_id"].iloc[2:])
    while resumed.current_case is not None:
        fill_widget(resumed, full_answers())
        resumed.submit_button.click()
    assert resumed.submit_button.disabled and "all 12 cases rated" in resumed.status.value
    good, problems = validate_ratings(read_ratings(ratings_path), deck)
    assert len(good) == 12 and problems.empty


def test_append_is_atomic_replace(tmp_path):
    path = tmp_path / "r.csv"
    append_answer(path, "a", "case001", full_answers(), "deck-1")
    append_answer(path, "a", "case002", full_answers(), "deck-1")
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]  # no temporary files left behind
    assert list(read_ratings(path)["case_id"]) == ["case001", "case002"]
    with pytest.raises(DataError, match="realism"):
        append_answer(path, "a", "case003", {**full_answers(), "realism": 9}, "deck-1")


def test_validator_names_every_bad_row_and_keeps_every_good_one(condition_table, tmp_path):
    deck, _ = build_deck(condition_table, seed=0)
    ids = list(deck["case_id"])
    deck_id = deck_fingerprint(deck)
    good_rows = [{"reader": "c", "case_id": case, "deck_id": deck_id, "answered_at": "t", **full_answers(10 * i)}
                 for i, case in enumerate(ids[:5])]
    bad_rows = [
        {"reader": "c", "case_id": "case999", "deck_id": deck_id, "answered_at": "t", **full_answers()},           # unknown case
        {"reader": "c", "case_id": ids[5], "deck_id": deck_id, "answered_at": "t", **{**full_answers(), "realism": 6}},  # out of range
        {"reader": "c", "case_id": ids[6], "deck_id": deck_id, "answered_at": "t", **{**full_answers(), "noise_increase": "maybe"}},
        {"reader": "c", "case_id": ids[7], "deck_id": deck_id, "answered_at": "t", **{**full_answers(), "nodule_confidence": ""}},
        {"reader": "c", "case_id": ids[0], "deck_id": deck_id, "answered_at": "t", **full_answers(99)},             # duplicate
    ]
    frame = pd.DataFrame(good_rows[:3] + bad_rows + good_rows[3:], columns=list(RATING_COLUMNS)).astype(str)
    path = tmp_path / "reader_c.csv"
    frame.to_csv(path, index=False)
    good, problems = validate_ratings(read_ratings(path), deck, source=path.name)
    assert list(good["case_id"]) == ids[:5]
    assert list(good["nodule_confidence"]) == [0, 10, 20, 30, 40]
    assert list(problems["line"]) == [5, 6, 7, 8, 9]
    texts = list(problems["problem"])
    assert "unknown case 'case999'" in texts[0]
    assert "realism='6' is outside" in texts[1]
    assert "noise_increase='maybe' is not a number" in texts[2]
    assert "nodule_confidence is missing" in texts[3]
    assert texts[4] == "duplicate of line 2"
    with pytest.raises(DataError, match="lacks columns"):
        validate_ratings(frame.drop(columns="realism"), deck)


def test_ratings_folder_feeds_the_mrmc_analysis(condition_table, tmp_path):
    deck, key = build_deck(condition_table, seed=5)
    folder = tmp_path / "ratings"
    write_deck(deck, key, folder)
    (folder / "deck.csv").unlink()
    truth = deck.merge(key, on="case_id")
    for reader in ("r1", "r2"):
        for row in truth.itertuples():
            undecided = reader == "r2" and row.condition == "drr"
            confidence = 50 if undecided else (80 if row.truth else 20)
            append_answer(folder / f"{reader}.csv", reader, row.case_id, full_answers(confidence), key.deck_id[0])
    ratings, problems, _ = load_ratings_folder(folder)
    assert problems.empty and len(ratings) == 24
    readings = ratings_to_readings(ratings)
    assert set(readings["modality"]) == set(CONDITIONS)
    with pytest.warns(DegenerateDataWarning, match="fixed readers"):  # r2's DRR ratings carry no variance
        result = or_analysis(readings)
    # both readers separate perfectly, except r2 on the DRRs, where every case got the same rating
    expected = pd.DataFrame(1.0, index=sorted(CONDITIONS), columns=["r1", "r2"])
    expected.loc["drr", "r2"] = 0.5
    np.testing.assert_array_equal(result.auc.to_numpy(), expected.to_numpy())
    assert load_ratings_folder(tmp_path / "nowhere")[0].empty
    os.remove(folder / "key.csv")
    with pytest.raises(DataError, match="key.csv"):
        load_ratings_folder(folder)


def test_question_agreement_identical_readers_agree_perfectly():
    from xrlib.readerstudy import question_agreement

    rows = []
    for reader in ("r1", "r2", "r3"):
        for case in range(6):
            rows.append({"reader": reader, "case_id": f"c{case}", "condition": "drr", **full_answers(10 * case),
                         "nodule_easily_visible": case % 2, "realism": 1 + case % 5})
    table = question_agreement(pd.DataFrame(rows)).set_index("question")
    for question in ("nodule_easily_visible", "realism", "nodule_confidence"):
        assert table.loc[question, "krippendorff_alpha"] == pytest.approx(1.0)
    assert table.loc["nodule_easily_visible", "fleiss_kappa"] == pytest.approx(1.0)
    assert table.loc["realism", "level"] == "ordinal" and table.loc["nodule_confidence", "level"] == "interval"


# --- damaged rating files and ratings of another deck -------------------------------------------------

def _study_folder(condition_table, tmp_path, seed=0):
    """A ratings folder with the deck's key.csv and a good reader file 'good.csv' (all 12 cases)."""
    deck, key = build_deck(condition_table, seed=seed)
    folder = tmp_path / "ratings"
    write_deck(deck, key, folder)
    (folder / "deck.csv").unlink()
    for case in deck["case_id"]:
        append_answer(folder / "good.csv", "g", case, full_answers(), key.deck_id[0])
    return deck, key, folder


def test_nan_inf_and_malformed_rows_are_named_and_good_rows_kept(condition_table, tmp_path):
    deck, key, folder = _study_folder(condition_table, tmp_path)
    ids, deck_id = list(deck["case_id"]), key.deck_id[0]
    header = ",".join(RATING_COLUMNS)

    def line(case, confidence="50", realism="4"):
        return f"m,{case},{deck_id},t,1,0,1,0,{realism},{confidence}"

    lines = [header, line(ids[0]), line(ids[1], confidence="nan"), line(ids[2], realism="inf"),
             line(ids[3]) + ",extra", "", line(ids[4], confidence="-inf"), line(ids[5])]
    (folder / "mixed.csv").write_text("\n".join(lines) + "\n")
    ratings, problems, _ = load_ratings_folder(folder)
    assert sorted(ratings[ratings.reader == "m"].case_id) == sorted([ids[0], ids[5]])
    assert (ratings.reader == "g").sum() == 12
    mixed = problems[problems.source == "mixed.csv"].set_index("line")["problem"]
    assert list(mixed.index) == [3, 4, 5, 7]
    assert "nodule_confidence='nan'" in mixed[3] and "realism='inf'" in mixed[4]
    assert "11 fields where the header has 10" in mixed[5] and "nodule_confidence='-inf'" in mixed[7]


def test_empty_undecodable_and_utf16_files(condition_table, tmp_path):
    deck, key, folder = _study_folder(condition_table, tmp_path)
    (folder / "empty.csv").write_bytes(b"")
    (folder / "latin1.csv").write_bytes((",".join(RATING_COLUMNS) + "\nJos\xe9,x\n").encode("latin-1"))
    (folder / "wide.csv").write_bytes((folder / "good.csv").read_text(encoding="utf-8")
                                      .replace("g,", "w,").encode("utf-16"))
    ratings, problems, _ = load_ratings_folder(folder)
    assert (ratings.reader == "g").sum() == 12 and (ratings.reader == "w").sum() == 12  # UTF-16 read whole
    by_file = problems.set_index("source")["problem"]
    assert "empty file (0 bytes)" in by_file["empty.csv"]
    assert "latin1.csv: not UTF-8 or UTF-16 text" in by_file["latin1.csv"]
    assert set(problems.source) == {"empty.csv", "latin1.csv"} and (problems.line == 0).all()


def test_ratings_are_bound_to_their_deck(condition_table, tmp_path):
    deck, key, folder = _study_folder(condition_table, tmp_path, seed=0)
    new_deck, new_key = build_deck(condition_table, seed=1)  # same images, another order: other case ids
    assert deck_fingerprint(new_deck) != key.deck_id[0] and deck_fingerprint(deck) == key.deck_id[0]
    assert readerstudy.study_deck_note(key, folder) == "" and readerstudy.study_deck_note(key, tmp_path / "none") == ""
    assert "do not copy the new key.csv there" in readerstudy.study_deck_note(new_key, folder)
    # the analyst puts a rebuilt deck's key beside the old ratings: nothing is silently re-mapped
    write_deck(new_deck, new_key, folder)
    ratings, problems, _ = load_ratings_folder(folder)
    assert ratings.empty and len(problems) == 12
    assert problems.problem.str.contains(f"made for deck '{key.deck_id[0]}', not this deck").all()
    # the widget and the writer refuse to mix decks in one file
    with pytest.raises(DataError, match="holds ratings of deck"):
        remaining_cases(new_deck, folder / "good.csv")
    with pytest.raises(DataError, match="holds ratings of deck"):
        append_answer(folder / "good.csv", "g", new_deck.case_id[0], full_answers(), new_key.deck_id[0])
    # a file from before decks were fingerprinted is named, with what to add
    old = pd.read_csv(folder / "good.csv", dtype=str).drop(columns="deck_id")
    old.to_csv(folder / "old.csv", index=False)
    _, problems, _ = load_ratings_folder(folder)
    assert "add the deck_id" in problems.set_index("source").loc["old.csv", "problem"]


def test_rating_session_asks_the_name_then_rates_into_the_readers_file(condition_table, tmp_path):
    deck, _ = build_deck(condition_table, seed=0)
    session = readerstudy.RatingSession(deck, "ratings", root=tmp_path)
    session.start_button.click()  # no name yet: nothing opens, nothing is written
    assert session.widget is None and "name" in session.message.value
    session.name.value = "erin"
    session.start_button.click()
    assert session.widget.ratings_path == tmp_path / "ratings" / "erin.csv"
    assert "ratings/erin.csv" in session.message.value and session.area.children == (session.widget.container,)
    fill_widget(session.widget, full_answers(70))
    session.widget.submit_button.click()
    assert read_ratings(tmp_path / "ratings" / "erin.csv")["nodule_confidence"].tolist() == ["70"]
