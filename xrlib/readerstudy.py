"""Reader-study kit: a blinded, randomised deck, a rating widget, and the ratings-file schema.

A *deck* shows cases in random order under opaque ids; the *key* (kept from the readers) maps each
case id back to its condition (raw DRR, baseline-restored, DiffusionXRay-restored, ...), its
source image and its truth (nodule present or not). Each reader's answers go to one CSV, one row
per case, rewritten atomically after every answer, so a crash loses at most the answer being
given and the widget resumes at the first unanswered case. :func:`validate_ratings` names every
bad row and keeps every good one.

The questions are the paper's (nodule easily visible; nodule confusable with bones, leads or
buttons; lung-field clarity improved; significant noise increase), a 5-point realism rating and a
0-100 confidence that a nodule is present (the ROC rating). Two questions compare the case with a
reference image; in a deck without references the reference panel and the "vs the reference"
wording are left out.

Paths are relative to the project root wherever they are stored: a deck names its images relative
to the root (so a deck made in another folder or on another machine opens here), and the widget
resolves a relative ratings path against the root, not the notebook's working folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from xrlib.errors import DataError
from xrlib.io import load_png, write_bytes_atomic, write_csv_atomic
from xrlib.paths import project_root


@dataclass(frozen=True)
class Question:
    """One question of the rating form: yes/no (0/1) or an integer scale [low, high]."""

    key: str
    text: str
    low: int = 0
    high: int = 1
    compares: bool = False
    """Asked against the reference image (its label says so only when the case has one)."""

    def label(self, with_reference: bool) -> str:
        """The question as shown: comparative questions name the reference when there is one."""
        return f"{self.text} (vs the reference)" if self.compares and with_reference else self.text

    @property
    def is_yes_no(self) -> bool:
        return (self.low, self.high) == (0, 1)


QUESTIONS = (
    Question("nodule_easily_visible", "Is the nodule easily visible?"),
    Question("nodule_confusable", "Could the nodule be confused with bones, leads or buttons?"),
    Question("lung_clarity_improved", "Is the clarity of the lung fields improved?", compares=True),
    Question("noise_increase", "Is there a significant increase in noise?", compares=True),
    Question("realism", "How realistic is this radiograph? (1 = clearly synthetic, 5 = indistinguishable from real)", 1, 5),
    Question("nodule_confidence", "Confidence that a nodule is present (0 = surely absent, 100 = surely present)", 0, 100),
)
QUESTION_KEYS = tuple(q.key for q in QUESTIONS)
RATING_COLUMNS = ("reader", "case_id", "deck_id", "answered_at", *QUESTION_KEYS)
CONDITION_COLUMNS = ("source_id", "condition", "image_path", "truth")
PROBLEM_COLUMNS = ("source", "line", "reader", "case_id", "problem")
DECK_COLUMNS = ("case_id", "image_path", "reference_path")


def deck_fingerprint(deck: pd.DataFrame) -> str:
    """A short SHA-256 of what readers see (case ids, images, references, in order): the deck's id.

    Stored in the key (``deck_id``) and in every rating, so ratings are only ever joined with the
    key of the deck they were given against.
    """
    shown = deck.loc[:, list(DECK_COLUMNS)].astype(object).fillna("").astype(str)
    return hashlib.sha256(shown.to_csv(index=False).encode("utf-8")).hexdigest()[:16]


def stored_path(value: object, root: Path | None = None) -> str:
    """A path as a deck stores it: relative to the project root (POSIX) when under it, else as given;
    "" for none (empty, NaN)."""
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        return ""
    path = Path(value)
    if path.is_absolute():
        try:
            return path.resolve().relative_to((root or project_root()).resolve()).as_posix()
        except ValueError:
            return str(path)
    return path.as_posix()


def resolve_path(value: object, root: Path | None = None) -> Path | None:
    """A stored path as a file here: relative paths are taken from the project root; None for none."""
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        return None
    path = Path(value)
    return path if path.is_absolute() else (root or project_root()) / path


def build_deck(conditions: pd.DataFrame, seed: int, id_prefix: str = "case",
               root: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A blinded deck and its hidden key from a condition table.

    ``conditions`` has one row per image to rate: ``source_id`` (the underlying case, shared by
    its versions under each condition), ``condition``, ``image_path``, ``truth`` (1 nodule
    present, 0 absent) and optionally ``reference_path`` (shown beside it for the comparative
    questions). Returns ``deck`` (case_id, image_path, reference_path: what readers see, in
    presentation order; paths under the project root ``root`` stored relative to it) and ``key`` (case_id, source_id, condition, truth, deck_id: the deck's
    :func:`deck_fingerprint`).
    """
    missing = [c for c in CONDITION_COLUMNS if c not in conditions.columns]
    if missing:
        raise DataError(f"condition table lacks columns {missing}; need {list(CONDITION_COLUMNS)}")
    if conditions.duplicated(["source_id", "condition"]).any():
        raise DataError("condition table lists a (source_id, condition) pair twice; each image once")
    if not conditions["truth"].isin([0, 1]).all():
        raise DataError("condition table: truth must be 0 (no nodule) or 1 (nodule)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(conditions))
    shuffled = conditions.iloc[order].reset_index(drop=True)
    width = max(3, len(str(len(shuffled))))
    case_ids = [f"{id_prefix}{i + 1:0{width}d}" for i in range(len(shuffled))]
    reference = shuffled["reference_path"] if "reference_path" in shuffled else pd.Series([""] * len(shuffled))
    root = root or project_root()
    deck = pd.DataFrame({"case_id": case_ids, "image_path": [stored_path(p, root) for p in shuffled["image_path"]],
                         "reference_path": [stored_path(p, root) for p in reference]})
    key = pd.DataFrame({"case_id": case_ids, "source_id": shuffled["source_id"].to_numpy(),
                        "condition": shuffled["condition"].to_numpy(), "truth": shuffled["truth"].astype(int).to_numpy(),
                        "deck_id": deck_fingerprint(deck)})
    return deck, key


def write_deck(deck: pd.DataFrame, key: pd.DataFrame, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``deck.csv`` (for readers) and ``key.csv`` (for the analyst) atomically into ``folder``."""
    folder = Path(folder)
    return write_csv_atomic(folder / "deck.csv", deck), write_csv_atomic(folder / "key.csv", key)


def _decode(path: Path) -> str:
    """A text file's content: UTF-8 (with or without BOM) or UTF-16 with a BOM."""
    data = path.read_bytes()
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 or UTF-16 text ({error}); save it as a UTF-8 CSV") from error


def parse_ratings(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reader's ratings CSV as strings with each row's file ``line``, and the rows it cannot use.

    UTF-8 and UTF-16 (with BOM) are read; an absent or 0-byte file has no rows. A row with the
    wrong number of fields is a problem (source, line, reader, case_id, problem) and never stops
    the other rows from being read.
    """
    path = Path(path)
    columns = [*RATING_COLUMNS, "line"]
    no_rows = pd.DataFrame(columns=columns), pd.DataFrame(columns=list(PROBLEM_COLUMNS))
    if not path.exists() or path.stat().st_size == 0:
        return no_rows
    try:
        lines = list(csv.reader(io.StringIO(_decode(path), newline="")))
    except csv.Error as error:
        raise DataError(f"{path}: not a readable CSV ({error}); save it as a UTF-8 CSV") from error
    header = lines[0] if lines else []
    missing = [c for c in RATING_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: ratings file lacks columns {missing}; expected {list(RATING_COLUMNS)}"
                        + (" (a file from before decks were fingerprinted: add the deck_id of the deck it was "
                           "rated against, from key.csv)" if missing == ["deck_id"] else ""))
    rows, problems = [], []
    for number, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue  # a blank line
        if len(fields) != len(header):
            record = dict(zip(header, fields))
            problems.append({"source": path.name, "line": number, "reader": record.get("reader", ""),
                             "case_id": record.get("case_id", ""),
                             "problem": f"{len(fields)} fields where the header has {len(header)}"})
            continue
        rows.append({**dict(zip(header, fields)), "line": number})
    return (pd.DataFrame(rows, columns=columns) if rows else no_rows[0],
            pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS)))


def study_deck_note(key: pd.DataFrame, ratings_folder: str | os.PathLike) -> str:
    """Say whether a freshly built deck (its ``key``) is the deck of the study under ``ratings_folder``.

    Empty when there is no study key there or it is the same deck; otherwise a note that the
    ratings there stay bound to their own key.csv (never re-mapped onto the new deck's case ids).
    """
    study_key = Path(ratings_folder) / "key.csv"
    if not study_key.is_file():
        return ""
    study_decks = set(pd.read_csv(study_key, dtype=str).get("deck_id", pd.Series(["(none)"])))
    if study_decks == {key["deck_id"].iloc[0]}:
        return ""
    return (f"the deck built now ({key['deck_id'].iloc[0]}) is not the deck of the ratings under {ratings_folder} "
            f"({', '.join(sorted(study_decks))}); they are analysed with their own key.csv: do not copy the new "
            "key.csv there, give readers the new deck with new ratings files")


def read_ratings(path: str | os.PathLike) -> pd.DataFrame:
    """A reader's ratings CSV as strings, one row per well-formed line (see :func:`parse_ratings`)."""
    return parse_ratings(path)[0].drop(columns="line")


def ratings_deck(path: str | os.PathLike) -> str | None:
    """The deck id a ratings file was made for (None when it has no rows); one deck per file."""
    decks = set(read_ratings(path)["deck_id"])
    if len(decks) > 1:
        raise DataError(f"{path}: holds ratings of several decks {sorted(decks)}; keep one file per deck")
    return decks.pop() if decks else None


def append_answer(path: str | os.PathLike, reader: str, case_id: str, answers: dict, deck_id: str) -> Path:
    """Append one case's answers, made against deck ``deck_id``, to the reader's CSV (replaced atomically).

    A file holding answers to another deck is refused: each ratings file belongs to one deck.
    """
    problems = answer_problems(answers)
    if problems:
        raise DataError(f"answers for {case_id}: {'; '.join(problems)}")
    path = Path(path)
    file_deck = ratings_deck(path)
    if file_deck not in (None, deck_id):
        raise DataError(f"{path}: holds ratings of deck {file_deck}, not of this deck {deck_id}; "
                        "rate this deck into a new file")
    row = {"reader": reader, "case_id": case_id, "deck_id": deck_id,
           "answered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           **{key: int(answers[key]) for key in QUESTION_KEYS}}
    empty = not path.exists() or path.stat().st_size == 0
    line = pd.DataFrame([row], columns=list(RATING_COLUMNS)).to_csv(index=False, header=empty)
    existing = b"" if empty else _decode(path).encode("utf-8")
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    return write_bytes_atomic(path, existing + line.encode("utf-8"))


def answer_problems(answers: dict) -> list[str]:
    """What is wrong with one set of answers (missing, not an integer, out of range); empty if fine."""
    problems = []
    for question in QUESTIONS:
        value = answers.get(question.key)
        if value is None or (isinstance(value, str) and value.strip() == ""):
            problems.append(f"{question.key} is missing")
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            problems.append(f"{question.key}={value!r} is not a number")
            continue
        if not math.isfinite(number) or number != int(number) or not question.low <= number <= question.high:
            problems.append(f"{question.key}={value!r} is outside the integers {question.low}..{question.high}")
    return problems


def remaining_cases(deck: pd.DataFrame, ratings_path: str | os.PathLike) -> list[str]:
    """Case ids of the deck not yet answered in the ratings file, in presentation order.

    A ratings file made for another deck is refused (its case ids would name other images).
    """
    file_deck, deck_id = ratings_deck(ratings_path), deck_fingerprint(deck)
    if file_deck not in (None, deck_id):
        raise DataError(f"{ratings_path}: holds ratings of deck {file_deck}, not of this deck {deck_id}; "
                        "give this reader a new ratings file for this deck")
    answered = set(read_ratings(ratings_path)["case_id"])
    return [case for case in deck["case_id"] if case not in answered]


def validate_ratings(ratings: pd.DataFrame, deck: pd.DataFrame, source: str = "ratings") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a ratings table into good rows (typed) and problems naming every bad row.

    ``deck`` is the deck or its key (case_id, and deck_id for a key). A row is bad if it was made
    for another deck, its case is not in the deck, any answer is missing, not finite or out of
    range, or it repeats an earlier row's (reader, case) (the first is kept). ``problems`` has the
    file line (header = line 1; from a ``line`` column where given), reader, case_id and what is wrong.
    """
    missing = [c for c in RATING_COLUMNS if c not in ratings.columns]
    if missing:
        raise DataError(f"{source}: lacks columns {missing}; expected {list(RATING_COLUMNS)}")
    known = set(deck["case_id"])
    deck_id = deck["deck_id"].iloc[0] if "deck_id" in deck.columns and len(deck) else deck_fingerprint(deck)
    seen: dict[tuple, int] = {}
    good_rows, problems = [], []
    for position, row in enumerate(ratings.to_dict("records")):
        line = int(row.get("line", position + 2))
        issues = []
        if row["deck_id"] != deck_id:
            issues.append(f"made for deck {row['deck_id']!r}, not this deck {deck_id!r} (analyse it with the "
                          "key.csv of its own deck)")
        elif row["case_id"] not in known:
            issues.append(f"unknown case {row['case_id']!r}")
        issues += answer_problems(row)
        identity = (row["reader"], row["case_id"])
        if not issues and identity in seen:
            issues.append(f"duplicate of line {seen[identity]}")
        if issues:
            problems.append({"source": source, "line": line, "reader": row["reader"], "case_id": row["case_id"],
                             "problem": "; ".join(issues)})
            continue
        seen[identity] = line
        good_rows.append(row)
    good = pd.DataFrame(good_rows, columns=list(RATING_COLUMNS))
    good[list(QUESTION_KEYS)] = good[list(QUESTION_KEYS)].astype(float).astype(int)
    return good, pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS))


def load_ratings_folder(folder: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Validated human ratings from a folder holding ``key.csv`` and one ``*.csv`` per reader.

    Returns (ratings joined with the key: source_id, condition, truth; problems; key). An absent
    or empty folder gives empty tables. Every bad row, and every file that cannot be read (not
    UTF-8/UTF-16, 0 bytes, no header), is a problem row (line 0 for a whole file); the good rows
    of every file are kept. Ratings made for another deck than the key's are problems too.
    """
    folder = Path(folder)
    key_path = folder / "key.csv"
    reader_files = sorted(p for p in folder.glob("*.csv") if p.name not in ("key.csv", "deck.csv")) if folder.is_dir() else []
    if not reader_files:
        empty = pd.DataFrame(columns=[*RATING_COLUMNS, "source_id", "condition", "truth"])
        return empty, pd.DataFrame(columns=list(PROBLEM_COLUMNS)), pd.DataFrame()
    if not key_path.exists():
        raise DataError(f"{folder}: ratings need the deck's key.csv beside them (from write_deck)")
    key = pd.read_csv(key_path, dtype={"case_id": str, "deck_id": str})
    if "deck_id" not in key.columns:
        raise DataError(f"{key_path}: has no deck_id column (written before decks were fingerprinted); "
                        "rebuild the key with build_deck from the same conditions and seed")
    good, problems = [], []
    for path in reader_files:
        if path.stat().st_size == 0:
            problems.append(pd.DataFrame([{"source": path.name, "line": 0, "reader": "", "case_id": "",
                                           "problem": "empty file (0 bytes): no ratings"}]))
            continue
        try:
            rows, malformed = parse_ratings(path)
        except DataError as error:
            problems.append(pd.DataFrame([{"source": path.name, "line": 0, "reader": "", "case_id": "",
                                           "problem": str(error)}]))
            continue
        rows, issues = validate_ratings(rows, key, source=path.name)
        good.append(rows)
        problems += [malformed, issues]
    columns = [*RATING_COLUMNS, "source_id", "condition", "truth"]
    ratings = (pd.concat(good, ignore_index=True).merge(key.drop(columns="deck_id"), on="case_id", how="left")
               if good else pd.DataFrame(columns=columns))
    problem_table = pd.concat([p for p in problems if len(p)], ignore_index=True) if any(len(p) for p in problems) \
        else pd.DataFrame(columns=list(PROBLEM_COLUMNS))
    return ratings, problem_table.sort_values(["source", "line"], ignore_index=True), key


def ratings_to_readings(ratings: pd.DataFrame, rating: str = "nodule_confidence") -> pd.DataFrame:
    """Long MRMC table (reader, modality, case, truth, rating) from ratings joined with the key.

    Modality is the condition and case the source image, so one case is read in every condition.
    """
    return pd.DataFrame({"reader": ratings["reader"], "modality": ratings["condition"],
                         "case": ratings["source_id"], "truth": ratings["truth"].astype(int),
                         "rating": ratings[rating].astype(float)})


def display_png_bytes(path: str | os.PathLike, max_size_px: int = 1024) -> bytes:
    """An image file as 8-bit PNG bytes for the widget (greyscale, longest side at most max_size_px)."""
    if not Path(path).is_file():
        raise DataError(f"deck image {path} does not exist: a deck names its images relative to the project root "
                        "(rebuild a deck that stores absolute paths of another machine with build_deck)")
    image = Image.fromarray(np.round(load_png(path) * 255).astype(np.uint8))
    image.thumbnail((max_size_px, max_size_px))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class RatingWidget:
    """A JupyterLab form that shows one case at a time and records the answers.

    ``RatingWidget(deck, "ratings/reader_a.csv", reader="a").show()`` in a notebook, from any
    folder: a relative ``ratings_path`` and the deck's relative image paths are taken from the
    project root ``root``. Every submit appends the answers (atomically) and moves to the next
    unanswered case; starting the widget again after a crash resumes where the file stops. The
    reference panel and the "vs the reference" wording show only for cases that have a reference.
    """

    def __init__(self, deck: pd.DataFrame, ratings_path: str | os.PathLike, reader: str, max_size_px: int = 768,
                 root: str | os.PathLike | None = None):
        import ipywidgets as widgets

        self.root = Path(root) if root is not None else project_root()
        self.deck = deck.set_index("case_id", drop=False)
        self.deck_id = deck_fingerprint(deck)
        self.ratings_path = resolve_path(ratings_path, self.root)
        self.reader = reader
        self.max_size_px = max_size_px
        self.queue = remaining_cases(deck, self.ratings_path)
        self.image = widgets.Image(format="png")
        self.reference = widgets.Image(format="png")
        self.inputs = {}
        for question in QUESTIONS:
            if question.is_yes_no:
                control = widgets.ToggleButtons(options=[("no", 0), ("yes", 1)], value=None)
            else:
                control = widgets.IntSlider(min=question.low, max=question.high, value=(question.low + question.high) // 2)
            self.inputs[question.key] = control
        self.submit_button = widgets.Button(description="Submit and next", button_style="primary")
        self.submit_button.on_click(self._on_submit)
        self.status = widgets.HTML()
        self.labels = {q.key: widgets.HTML(f"<b>{q.label(False)}</b>") for q in QUESTIONS}
        form = [widgets.VBox([self.labels[q.key], self.inputs[q.key]]) for q in QUESTIONS]
        self.reference_panel = widgets.VBox([widgets.HTML("reference"), self.reference])
        self.container = widgets.VBox([
            self.status,
            widgets.HBox([widgets.VBox([widgets.HTML("case"), self.image]), self.reference_panel]),
            *form, self.submit_button,
        ])
        self._show_current()

    @property
    def current_case(self) -> str | None:
        """The case on screen (None when the deck is finished)."""
        return self.queue[0] if self.queue else None

    def show(self):
        """The widget tree, for display in a notebook."""
        return self.container

    def _show_current(self) -> None:
        done = len(self.deck) - len(self.queue)
        if self.current_case is None:
            self.status.value = f"Reader {self.reader}: all {len(self.deck)} cases rated. Thank you."
            self.submit_button.disabled = True
            return
        entry = self.deck.loc[self.current_case]
        self.image.value = display_png_bytes(resolve_path(entry["image_path"], self.root), self.max_size_px)
        # a deck read back with pandas holds NaN where no reference was given
        reference = resolve_path(entry.get("reference_path", ""), self.root)
        self.reference.value = display_png_bytes(reference, self.max_size_px) if reference else b""
        self.reference_panel.layout.display = None if reference else "none"
        for question in QUESTIONS:
            self.labels[question.key].value = f"<b>{question.label(reference is not None)}</b>"
        for question in QUESTIONS:
            control = self.inputs[question.key]
            control.value = None if question.is_yes_no else (question.low + question.high) // 2
        self.status.value = f"Reader {self.reader}: case {done + 1} of {len(self.deck)} ({self.current_case})"

    def _on_submit(self, _button=None) -> None:
        answers = {key: control.value for key, control in self.inputs.items()}
        problems = answer_problems(answers)
        if problems:
            self.status.value = "Please answer every question: " + "; ".join(problems)
            return
        append_answer(self.ratings_path, self.reader, self.current_case, answers, self.deck_id)
        self.queue.pop(0)
        self._show_current()


class RatingSession:
    """The rating form of a study, opened in the Lab: a reader types their name and presses Start.

    ``RatingSession(deck, "ratings").show()`` in a notebook; Start opens a :class:`RatingWidget` on
    ``<ratings_folder>/<name>.csv`` (a relative folder is taken from the project root), which
    resumes where that reader stopped. Nothing is written before the first answer.
    """

    NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

    def __init__(self, deck: pd.DataFrame, ratings_folder: str | os.PathLike = "ratings", max_size_px: int = 768,
                 root: str | os.PathLike | None = None):
        import ipywidgets as widgets

        self.deck, self.max_size_px = deck, max_size_px
        self.root = Path(root) if root is not None else project_root()
        self.ratings_folder = resolve_path(ratings_folder, self.root)
        self.name = widgets.Text(placeholder="your name: letters, digits, - or _", description="Reader")
        self.start_button = widgets.Button(description="Start", button_style="primary")
        self.start_button.on_click(self._on_start)
        self.message = widgets.HTML()
        self.area = widgets.VBox()
        self.widget: RatingWidget | None = None
        self.container = widgets.VBox([widgets.HBox([self.name, self.start_button]), self.message, self.area])

    def show(self):
        """The form, for display in a notebook."""
        return self.container

    def _on_start(self, _button=None) -> None:
        name = self.name.value.strip()
        if not self.NAME.fullmatch(name):
            self.message.value = "Please type your name (letters, digits, - or _), then press Start."
            return
        self.widget = RatingWidget(self.deck, self.ratings_folder / f"{name}.csv", name, self.max_size_px, self.root)
        self.name.disabled = self.start_button.disabled = True
        self.message.value = f"Answers go to {stored_path(self.widget.ratings_path, self.root)}"
        self.area.children = (self.widget.show(),)


QUESTION_LEVELS = {q.key: ("nominal" if q.is_yes_no else "ordinal" if q.high <= 10 else "interval") for q in QUESTIONS}


def question_agreement(ratings: pd.DataFrame) -> pd.DataFrame:
    """Inter-reader agreement per condition and question: Krippendorff's alpha (missing allowed)
    at the question's level (nominal yes/no, ordinal realism, interval confidence), and Fleiss'
    kappa for the yes/no questions where every reader rated every case."""
    from xrlib.stats import fleiss_kappa, krippendorff_alpha

    rows = []
    for condition, group in ratings.groupby("condition", sort=True):
        for key, level in QUESTION_LEVELS.items():
            wide = group.pivot_table(index="reader", columns="case_id", values=key, aggfunc="first")
            row = {"condition": condition, "question": key, "level": level, "n_readers": wide.shape[0],
                   "n_cases": wide.shape[1], "krippendorff_alpha": np.nan, "fleiss_kappa": np.nan}
            if wide.shape[0] >= 2 and wide.notna().sum(axis=0).ge(2).any():
                row["krippendorff_alpha"] = krippendorff_alpha(wide.to_numpy(float), level)
                complete = wide.dropna(axis=1)
                if level == "nominal" and complete.shape[1] > 0 and np.unique(complete).size > 1:
                    row["fleiss_kappa"] = fleiss_kappa(complete.T.to_numpy(), categories=[0, 1]).kappa
            rows.append(row)
    return pd.DataFrame(rows)
