"""Review sessions in SQLite: they survive a restart, resume at the first unreviewed cell, summarise agreement,
compare two reviewers (Cohen's kappa, as scikit-learn computes it) and export a CSV that reads back."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXTERNAL_DEV, mirror_run
from external_fixtures import cell_image, jpeg_bytes
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from core.access.roles import AccessDenied, User
from core.data import uploads
from core.data.registry import label_names, short_label
from core.validation import review as rv

LABELS = [short_label(x) for x in label_names()]
BASO, EOS, ERY, IG, LYM, MONO, NEU, PLT = LABELS
A, B = User("Dr A", ("reviewer",)), User("Dr B", ("reviewer",))


def specs(n: int = 6) -> list[rv.CellSpec]:
    calls = [MONO, NEU, IG, LYM, NEU, EOS, BASO, PLT][:n]
    return [rv.CellSpec(f"cell-{i}", f"/images/{i}.png", [MONO, NEU, NEU, LYM, NEU, EOS, BASO, PLT][i], call,
                        0.5 + 0.05 * i) for i, call in enumerate(calls)]


def new_session(store: rv.ReviewStore, reviewer: str = "Dr A", cells=None) -> int:
    return store.create_session(User(reviewer, ("reviewer",)), "20260101-000000-abcdef", "/runs/x", "external",
                                "/data/x", "confidence", specs() if cells is None else cells, label_names())


def test_sessions_survive_a_restart_and_resume_at_the_first_unreviewed_cell(tmp_path):
    db = tmp_path / "reviews.sqlite"
    store = rv.ReviewStore(db)
    sid = new_session(store)
    store.record(sid, 0, "agree", note="classic monocyte", user=A)
    store.record(sid, 1, "reclassify", IG, user=A)
    store.record(sid, 3, "unsure", user=A)
    del store

    again = rv.ReviewStore(db)  # a "restart": a new object on the same file
    s = again.session(sid)
    assert (s["reviewer"], s["n_cells"], s["reviewed"], s["labels"]) == ("Dr A", 6, 3, LABELS)
    assert again.progress(sid) == (3, 6)
    assert again.first_unreviewed(sid) == 2
    assert again.first_unreviewed(sid, after=2) == 4
    assert again.first_unreviewed(sid, after=5) == 2  # wraps round
    cells = again.cells(sid)
    assert cells[0]["decision"] == "agree" and cells[0]["label"] == MONO and cells[0]["note"] == "classic monocyte"
    assert cells[1]["label"] == IG and cells[3]["label"] is None and cells[2]["decision"] is None
    assert cells[0]["reviewer"] == "Dr A" and cells[0]["decided_at"] > 0
    for position in (2, 4, 5):
        again.record(sid, position, "not_cell", user=A)
    assert again.first_unreviewed(sid) is None
    assert [r["id"] for r in rv.ReviewStore(db).sessions(A)] == [sid]


def test_next_item_resumes_and_moves_on_after_a_decision(tmp_path):
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    sid = new_session(store)
    assert store.next_item(sid) == 0  # opening a new session: its first cell
    store.record(sid, 0, "agree", user=A)
    store.record(sid, 2, "unsure", user=A)
    assert store.next_item(sid) == 1  # resuming: the first cell without a decision
    assert store.next_item(sid, after=0) == 1
    assert store.next_item(sid, after=1) == 3  # skips the decided cell 2
    assert store.next_item(sid, after=5) == 1  # wraps round
    for position in (1, 3, 4, 5):
        store.record(sid, position, "agree", user=A)
    assert store.next_item(sid) == 0  # all done: back to the first cell
    assert store.next_item(sid, after=2) == 3  # all done: the cell after the one just decided
    assert store.next_item(sid, after=5) == 5  # ... or the last one stays


def test_a_damaged_database_is_a_store_error(tmp_path):
    from core.errors import StoreError, UserFacingError

    db = tmp_path / "reviews.sqlite"
    db.write_bytes(b"this is not an SQLite database, just some bytes" * 50)
    with pytest.raises(rv.ReviewStoreError, match="reviews.sqlite") as caught:
        rv.ReviewStore(db)
    assert isinstance(caught.value, StoreError) and isinstance(caught.value, UserFacingError)
    good = rv.ReviewStore(tmp_path / "good.sqlite")
    sid = new_session(good)
    (tmp_path / "good.sqlite").write_bytes(b"\0" * 4096)  # damaged while in use
    for tmp in tmp_path.glob("good.sqlite-*"):
        tmp.unlink()
    with pytest.raises(rv.ReviewStoreError):
        good.cells(sid)


def test_a_decision_can_be_changed_and_cleared(tmp_path):
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    sid = new_session(store)
    store.record(sid, 0, "unsure", user=A)
    store.record(sid, 0, "reclassify", LYM, note="changed my mind", user=A)
    cell = store.cell(sid, 0)
    assert (cell["decision"], cell["label"], cell["note"]) == ("reclassify", LYM, "changed my mind")
    assert store.progress(sid) == (1, 6)
    store.clear(sid, 0, user=A)
    assert store.progress(sid) == (0, 6)


def test_invalid_decisions_are_refused(tmp_path):
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    sid = new_session(store)
    with pytest.raises(rv.ReviewError):
        store.record(sid, 0, "maybe", user=A)
    with pytest.raises(rv.ReviewError):
        store.record(sid, 0, "reclassify", "dragon", user=A)
    with pytest.raises(rv.ReviewError):
        store.record(sid, 99, "agree", user=A)
    with pytest.raises(rv.ReviewError):
        store.record(sid, 0, "agree", note="x" * (rv.MAX_NOTE + 1), user=A)
    with pytest.raises(AccessDenied):
        new_session(store, reviewer="   ")
    with pytest.raises(rv.ReviewError):
        new_session(store, cells=[])
    with pytest.raises(rv.ReviewError):
        store.session(12345)


def test_order_lowest_confidence_or_ambiguous_first():
    cells = [rv.CellSpec("a", "a", None, NEU, 0.3), rv.CellSpec("b", "b", None, MONO, 0.9),
             rv.CellSpec("c", "c", None, IG, 0.6), rv.CellSpec("d", "d", None, LYM, 0.2)]
    assert [c.key for c in rv.order_cells(cells, "confidence", LABELS)] == ["d", "a", "c", "b"]
    assert [c.key for c in rv.order_cells(cells, "ambiguous", label_names())] == ["c", "b", "d", "a"]
    with pytest.raises(rv.ReviewError):
        rv.order_cells(cells, "random", LABELS)


def test_summary_agreement_per_class_and_confusion(tmp_path):
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    sid = new_session(store)
    store.record(sid, 0, "agree", user=A)  # model MONO
    store.record(sid, 1, "agree", user=A)  # model NEU
    store.record(sid, 2, "reclassify", NEU, user=A)  # model IG -> NEU
    store.record(sid, 3, "not_cell", user=A)  # model LYM
    store.record(sid, 4, "unsure", user=A)  # model NEU
    s = store.summary(sid)
    assert s["reviewed"] == 5 and s["n_cells"] == 6
    assert s["decisions"] == {"agree": 2, "reclassify": 1, "unsure": 1, "not_cell": 1}
    # agreement is over the 3 cells the reviewer gave a class: unsure and not-a-cell are not disagreements
    assert s["agreement_overall"] == pytest.approx(2 / 3) and s["agreement_n"] == 3
    per = {r["model_label"]: r for r in s["agreement"]}
    assert per[NEU]["reviewed"] == 2 and per[NEU]["definite"] == 1 and per[NEU]["agreement"] == 1.0
    assert per[IG]["agreement"] == 0.0 and per[EOS]["agreement"] is None
    assert per[LYM]["reviewed"] == 1 and per[LYM]["agreement"] is None  # only "not a cell": no agreement to state
    cf = s["confusion"]
    assert cf["rows"] == LABELS and cf["columns"] == LABELS + [rv.UNSURE, rv.NOT_CELL]
    m = np.asarray(cf["matrix"])
    assert m.sum() == 5
    assert m[LABELS.index(IG), LABELS.index(NEU)] == 1
    assert m[LABELS.index(LYM), cf["columns"].index(rv.NOT_CELL)] == 1
    assert m[LABELS.index(NEU), cf["columns"].index(rv.UNSURE)] == 1
    # against the dataset's labels: model right on cells 0, 1, 3, 4; reviewer on 0, 1, 2
    assert s["vs_truth"] == {"n": 5, "model_accuracy": 4 / 5, "reviewer_accuracy": 3 / 5}


def test_agreement_leaves_unsure_and_not_a_cell_out_of_its_denominator(tmp_path):
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    sid = new_session(store)
    for position in range(4):
        store.record(sid, position, "unsure" if position % 2 else "not_cell", user=A)
    s = store.summary(sid)
    assert s["reviewed"] == 4 and s["agreement_n"] == 0 and s["agreement_overall"] is None
    store.record(sid, 4, "agree", user=A)
    s = store.summary(sid)
    assert s["agreement_overall"] == 1.0 and s["agreement_n"] == 1  # was 1/5 when unsure counted against it


def test_undo_takes_back_the_latest_decision_only(tmp_path):
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    sid = new_session(store)
    assert store.undo_last(sid, user=A) is None  # nothing to undo
    store.record(sid, 3, "agree", user=A)
    store.record(sid, 0, "reclassify", NEU, note="band?", user=A)
    assert store.last_decided(sid) == 0
    assert store.undo_last(sid, user=A) == 0
    cells = store.cells(sid)
    assert cells[0]["decision"] is None and cells[0]["note"] is None and cells[3]["decision"] == "agree"
    assert store.undo_last(sid, user=A) == 3 and store.progress(sid) == (0, 6)
    store.record(sid, 1, "agree", user=A)
    with pytest.raises(AccessDenied):
        store.undo_last(sid, user=B)  # another reviewer's session
    assert store.progress(sid) == (1, 6)


def test_top_classes_are_stored_shown_and_exported(tmp_path):
    probs = np.array([0.01, 0.02, 0.0, 0.3, 0.02, 0.05, 0.6, 0.0])
    top = rv.top_classes(probs, label_names())
    assert top == ((NEU, 0.6), (IG, 0.3), (MONO, 0.05))
    cells = [rv.CellSpec("a", "/a.png", None, NEU, 0.6, top), rv.CellSpec("b", "/b.png", None, NEU, 0.7)]
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    sid = new_session(store, cells=cells)
    first, second = store.cells(sid)
    assert first["top"] == [(NEU, 0.6), (IG, 0.3), (MONO, 0.05)] and second["top"] == []
    df = pd.read_csv(io.StringIO(store.export_csv(sid)), keep_default_na=False)
    assert list(df["model_top3"]) == [f"{NEU} 60.0%; {IG} 30.0%; {MONO} 5.0%", ""]


def test_a_database_from_before_top_classes_opens_and_reads(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    store = rv.ReviewStore(db)
    sid = new_session(store)
    with sqlite3.connect(db) as con:  # the table as earlier versions made it: no top_json column
        con.execute("ALTER TABLE review_cells DROP COLUMN top_json")
    again = rv.ReviewStore(db)
    assert again.cell(sid, 0)["top"] == [] and len(again.cells(sid)) == 6


def test_summary_without_the_model_calls_nobody_reviewed(tmp_path):
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    sid = new_session(store)
    store.record(sid, 2, "reclassify", NEU, user=A)  # model IG
    store.record(sid, 1, "agree", user=A)  # model NEU
    store.record(sid, 4, "not_cell", user=A)  # model NEU
    s = store.summary(sid)
    assert [r["model_label"] for r in s["agreement"]] == LABELS  # the summary keeps every class
    rows = rv.reviewed_agreement(s["agreement"])
    assert [(r["model_label"], r["reviewed"]) for r in rows] == [(IG, 1), (NEU, 2)]
    counts, labels, columns = rv.reviewed_confusion(s["confusion"])
    assert labels == [IG, NEU] and columns == LABELS + [rv.UNSURE, rv.NOT_CELL]
    assert counts.tolist() == [[0] * 6 + [1, 0, 0, 0], [0] * 6 + [1, 0, 0, 1]]
    empty = rv.reviewed_confusion(rv.ReviewStore(tmp_path / "r.sqlite").summary(new_session(store))["confusion"])
    assert empty[0].shape == (0, 10) and empty[1] == []


def test_positions_stay_inside_the_session():
    assert rv.clamp_position(None, 6) == 0
    assert [rv.clamp_position(p, 6) for p in (-1, 0, 3, 5, 6, 40)] == [0, 0, 3, 5, 5, 5]


def test_cohens_kappa_between_two_reviewers_equals_sklearn(tmp_path):
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    cells = specs(8)
    a = new_session(store, "Dr A", cells)
    b = new_session(store, "Dr B", cells)
    assert [r["id"] for r in store.same_set(a)] == [b]
    decisions_a = [("agree", None), ("agree", None), ("reclassify", NEU), ("agree", None), ("unsure", None),
                   ("agree", None), ("not_cell", None), ("agree", None)]
    decisions_b = [("agree", None), ("reclassify", MONO), ("reclassify", NEU), ("agree", None), ("agree", None),
                   ("reclassify", BASO), ("not_cell", None), None]  # B has not reviewed the last cell
    for i, (da, db) in enumerate(zip(decisions_a, decisions_b)):
        store.record(a, i, *da, user=A)
        if db:
            store.record(b, i, *db, user=B)
    k = store.kappa(a, b)
    cats_a = [MONO, NEU, NEU, LYM, rv.UNSURE, EOS, rv.NOT_CELL]
    cats_b = [MONO, MONO, NEU, LYM, NEU, BASO, rv.NOT_CELL]
    assert k["n"] == 7
    assert k["kappa"] == pytest.approx(cohen_kappa_score(cats_a, cats_b))
    assert k["observed_agreement"] == pytest.approx(4 / 7)
    assert store.kappa(b, a)["kappa"] == pytest.approx(k["kappa"])
    # a session over other cells is not "the same set"
    other = new_session(store, "Dr C", specs(5))
    assert other not in [r["id"] for r in store.same_set(a)]


def test_kappa_is_undefined_without_overlap(tmp_path):
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    a, b = new_session(store, "Dr A"), new_session(store, "Dr B")
    store.record(a, 0, "agree", user=A)
    assert store.kappa(a, b) == {"n": 0, "observed_agreement": None, "kappa": None}


def test_csv_export_reads_back_as_stored(tmp_path):
    store = rv.ReviewStore(tmp_path / "r.sqlite")
    sid = new_session(store)
    store.record(sid, 0, "agree", note='a note, with "quotes" and a comma', user=A)
    store.record(sid, 2, "reclassify", NEU, user=A)
    store.record(sid, 5, "not_cell", note="débris\nsecond line", user=A)
    path = tmp_path / "review.csv"
    path.write_text(store.export_csv(sid))
    df = pd.read_csv(path, keep_default_na=False)
    assert tuple(df.columns) == rv.CSV_COLUMNS
    cells = store.cells(sid)
    assert len(df) == len(cells)
    for row, cell in zip(df.to_dict("records"), cells):
        assert row["session_id"] == sid and row["reviewer"] == "Dr A"
        assert row["position"] == cell["position"] + 1
        assert row["cell_key"] == cell["cell_key"] and row["image"] == cell["image"]
        assert row["true_label"] == (cell["true_label"] or "")
        assert row["model_label"] == cell["model_label"]
        assert row["model_confidence"] == pytest.approx(cell["confidence"], abs=1e-6)
        assert row["decision"] == (cell["decision"] or "")
        assert row["reviewer_label"] == (rv.reviewer_category(cell["decision"], cell["label"]) or "")
        assert row["note"] == (cell["note"] or "")
        assert bool(row["decided_at"]) == bool(cell["decision"])


# -- sessions built with the real model -----------------------------------------------------------------

@pytest.fixture(scope="module")
def clf(tmp_path_factory, trained_run):
    from core.inference.classifier import Classifier

    return Classifier(mirror_run(Path(trained_run), tmp_path_factory.mktemp("review-artifacts")))


def test_cells_from_the_test_split(clf):
    cells = rv.cells_from_test_split(clf, limit=10, order="confidence")
    assert len(cells) == 10
    conf = [c.confidence for c in cells]
    assert conf == sorted(conf)
    assert all(c.key.startswith("test:") and c.image.startswith("npz:") and c.true_label in LABELS for c in cells)
    assert all(len(c.top) == 3 and c.top[0] == (c.model_label, pytest.approx(c.confidence, abs=1e-6)) for c in cells)
    # the same cells from the run's stored predictions, without the model (what the page does)
    from core.evaluation import predictions

    stored = predictions.load_or_compute(clf.run.path, clf)
    again = rv.cells_from_predictions(clf.run.training_data(), clf.labels, stored.y_true, stored.probabilities, 10)
    assert [c.key for c in again] == [c.key for c in cells]
    shown, seen = rv.cell_pixels(cells[0].image, clf.image_size)
    assert seen.shape == (clf.image_size, clf.image_size, 3) and shown.shape == seen.shape
    ambiguous = rv.cells_from_test_split(clf, limit=0, order="ambiguous")
    calls = [c.model_label in (MONO, IG) for c in ambiguous]
    assert calls == sorted(calls, reverse=True)  # every ambiguous call comes before any other


def test_cells_from_an_external_folder_and_uploads(clf, tmp_path):
    cells = rv.cells_from_external(clf, str(EXTERNAL_DEV), limit=5)
    assert len(cells) == 5 and all(Path(c.key).is_file() and c.true_label in LABELS for c in cells)
    shown, seen = rv.cell_pixels(cells[0].image, clf.image_size)
    assert shown.shape == (300, 300, 3) and seen.shape == (clf.image_size, clf.image_size, 3)
    paths, problems = rv.save_uploads([("a.jpg", jpeg_bytes(cell_image(1))), ("bad.png", b"nope"),
                                       ("../../evil.png", jpeg_bytes(cell_image(2)))], tmp_path / "uploads")
    assert len(paths) == 2 and len(problems) == 1 and "bad.png" in problems[0]
    assert all(Path(p).parent == tmp_path / "uploads" and "evil" not in p for p in paths)
    assert not (tmp_path.parent / "evil.png").exists()
    uploaded = rv.cells_from_files(clf, paths)
    assert len(uploaded) == 2 and all(c.true_label is None for c in uploaded)


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def test_review_uploads_are_bounded_in_size_and_budget(tmp_path, monkeypatch):
    """A large upload is kept at UPLOAD_MAX_SIDE at most (and says so); the upload budget refuses the rest."""
    big = np.zeros((3000, 2400, 3), np.uint8)
    paths, notes = rv.save_uploads([("big.png", png_bytes(big))], tmp_path / "uploads")
    with Image.open(paths[0]) as saved:
        assert saved.size == (1638, 2048)
    assert len(notes) == 1 and "big.png: reduced to 1638x2048" in notes[0]
    monkeypatch.setattr(uploads, "MAX_UPLOAD_PIXELS", 3000 * 2400 + 100)
    paths, problems = rv.save_uploads([("one.png", png_bytes(big)), ("two.png", png_bytes(big))],
                                      tmp_path / "uploads")
    assert len(paths) == 1 and len(problems) == 2 and "two.png: refused" in problems[1]


def test_uploads_no_session_uses_are_cleaned_and_nothing_else(tmp_path):
    """Deleting an uploads session removes its images; images left out of a session go after an hour; images
    another session uses, and any file outside the uploads folder (an external dataset's), stay."""
    store = rv.ReviewStore(tmp_path / "reviews.sqlite")
    paths, _ = rv.save_uploads([(f"{i}.jpg", jpeg_bytes(cell_image(i))) for i in range(3)], store.uploads_dir)
    outside = tmp_path / "dataset" / "x.png"
    outside.parent.mkdir()
    outside.write_bytes(png_bytes(cell_image(4)))
    user = User("Dr A", ("reviewer",))

    def session_over(images: list[str]) -> int:
        cells = [rv.CellSpec(key=p, image=p, true_label=None, model_label=LABELS[0], confidence=0.5) for p in images]
        return store.create_session(user, "20260101-000000-abcdef", "/runs/x", "uploads", "uploads", "confidence",
                                    cells, LABELS)

    first, second = session_over(paths[:1] + [str(outside)]), session_over(paths[1:2])
    assert all(Path(p).is_file() for p in paths)  # the unused third is under an hour old: kept for now
    assert store.clean_uploads(min_age_s=0) == 1 and not Path(paths[2]).exists()
    store.delete_session(first, user)
    assert not Path(paths[0]).exists() and outside.is_file() and Path(paths[1]).is_file()
    store.delete_session(second, user)
    assert not Path(paths[1]).exists() and outside.is_file()


def test_a_dataset_cell_is_shown_from_the_largest_copy_that_matches(tmp_path):
    """MedMNIST files of different sizes share split indices: the 64 px file beside a 28 px one gives the same
    cell larger; a file of that name whose cells differ (here: flipped) is not taken for a copy."""
    from conftest import NPZ_28, NPZ_64, write_subset

    small = write_subset(NPZ_28, tmp_path / "cells28.npz", 16, 8, 24)
    alone = rv.original_cell(f"npz:{small}#test:5")
    assert alone.image.shape == (28, 28, 3) and "largest copy of this cell here" in alone.note
    write_subset(NPZ_64, tmp_path / "cells64.npz", 16, 8, 24)
    assert [s for s, _ in rv.larger_copies(small, 28)] == [64]
    big = rv.original_cell(f"npz:{small}#test:5")
    assert big.image.shape == (64, 64, 3) and big.note.startswith("the 64 px copy of this cell (cells64.npz)")
    with np.load(tmp_path / "cells64.npz") as npz:
        arrays = dict(npz)
    arrays["test_images"] = arrays["test_images"][:, ::-1]  # same labels, other pixels
    other = tmp_path / "flipped"
    other.mkdir()
    np.savez(other / "cells64.npz", **arrays)
    small_there = other / "cells28.npz"
    small_there.write_bytes(small.read_bytes())
    assert rv.original_cell(f"npz:{small_there}#test:5").image.shape == (28, 28, 3)
    upload = tmp_path / "cell.png"
    Image.fromarray(cell_image(3, 120)).save(upload)
    shown = rv.original_cell(str(upload))
    assert shown.image.shape == (120, 120, 3) and "120 x 120 px" in shown.note
