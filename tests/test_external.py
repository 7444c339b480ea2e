"""External validation on the real 5-class external_dev set (another lab's CellaVision images) and on folders
and CSVs with every layout problem, scored with the real tiny trained fixture run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import EXTERNAL_DEV, mirror_run
from external_fixtures import EXTERNAL_COUNTS, cell_image, messy_dataset, save

from core.cli import build_parser, main
from core.data.registry import label_names, short_label
from core.evaluation.metrics import SCHEMA_VERSION
from core.validation.external import errors, finetune, flow, loading, mapping, report, scan, scoring, storage

SHORT = [short_label(x) for x in label_names()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained_run) -> Path:
    return mirror_run(Path(trained_run), tmp_path_factory.mktemp("ext-artifacts"))


@pytest.fixture(scope="module")
def clf(run_dir):
    from core.inference.classifier import Classifier

    return Classifier(run_dir)


@pytest.fixture(scope="module")
def dev_data(clf) -> loading.ExternalImages:
    source = scan.scan(EXTERNAL_DEV)
    return loading.load_images(source, clf.image_size, mapping.build_mapping(source.classes, None, clf.labels),
                           "medmnist", clf.labels)


@pytest.fixture(scope="module")
def dev_record(clf, dev_data, run_dir) -> dict:
    return scoring.evaluate(clf, dev_data, "none", run_dir=run_dir)


# -- the real external set -----------------------------------------------------------------------------

def test_external_dev_layout_counts():
    source = scan.scan_folder(EXTERNAL_DEV)
    assert source.counts == EXTERNAL_COUNTS
    assert len(source.files) == 100
    assert source.problems() == {"empty_classes": [], "not_images": 0, "loose_files": 0, "nested_files": 0,
                                 "bad_rows": 0, "missing_files": 0, "outside": 0}


def test_external_dev_classes_map_automatically():
    assert mapping.auto_mapping(EXTERNAL_COUNTS) == {name: name for name in EXTERNAL_COUNTS}


@pytest.mark.parametrize("name, expected", [
    ("IG", "immature granulocytes"), ("ig", "immature granulocytes"),
    ("Immature_Granulocyte", "immature granulocytes"), ("immature granulocytes", "immature granulocytes"),
    ("Metamyelocytes", "immature granulocytes"), ("Lymphocytes", "lymphocyte"), ("lymph", "lymphocyte"),
    ("LYMPHS", "lymphocyte"), ("Basophils", "basophil"), ("EOS", "eosinophil"), ("Band", "neutrophil"),
    ("segmented neutrophils", "neutrophil"), ("02-Monocyte", "monocyte"), ("NRBC", "erythroblast"),
    ("Platelets", "platelet"), ("PLT", "platelet"),
    ("Smudge cells", None), ("lymphoblast", None), ("myeloblast", None), ("granulocyte", None), ("Train", None),
])
def test_class_name_mapping(name, expected):
    assert mapping.auto_mapping([name])[name] == expected


def test_mapping_overrides_and_errors():
    mapped = mapping.build_mapping(["Band", "Smudge", "weird"], {"weird": "IG", "band": "none"})
    assert mapped == {"Band": None, "Smudge": None, "weird": "immature granulocytes"}
    with pytest.raises(errors.ExternalError, match="no class 'nope'"):
        mapping.build_mapping(["Band"], {"nope": "neutrophil"})
    with pytest.raises(errors.ExternalError, match="unknown class"):
        mapping.build_mapping(["Band"], {"Band": "dragon"})
    assert mapping.parse_map_args(["Band=neutrophil", "Smudge=none"]) == {"Band": "neutrophil", "Smudge": None}
    with pytest.raises(errors.ExternalError):
        mapping.parse_map_args(["no-equals-sign"])


def test_zero_shot_metric_structures(dev_record, dev_data):
    shared = sorted(EXTERNAL_COUNTS)
    assert dev_record["n_images"] == 100 == len(dev_data)
    assert dev_record["shared_labels"] == [s for s in SHORT if s in shared]
    assert dev_record["labels"] == SHORT
    for mode, n_cols in (("all", 8), ("shared", 5)):
        m = dev_record["metrics"][mode]
        assert set(m["per_class"]) == set(shared)
        assert {k: v["support"] for k, v in m["per_class"].items()} == EXTERNAL_COUNTS
        for v in m["per_class"].values():
            assert 0 <= v["precision"] <= 1 and 0 <= v["recall"] <= 1 and 0 <= v["f1"] <= 1
        assert m["schema_version"] == SCHEMA_VERSION and m["labels"] == SHORT
        for row in scoring.table14(m)[:-1]:
            assert row["accuracy"] == m["per_class"][row["class"]]["recall"]  # Table 15's per-class accuracy
        cm = np.asarray(m["confusion"])
        assert cm.shape == (5, n_cols) and cm.sum() == 100
        assert m["rows"] == dev_record["shared_labels"]
        diagonal = sum(cm[i, m["columns"].index(r)] for i, r in enumerate(m["rows"]))
        assert m["accuracy"] == pytest.approx(diagonal / 100)
        assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
        rows = scoring.table14(m)
        assert rows[-1]["class"] == "Overall" and rows[-1]["accuracy"] == m["accuracy"]
    assert dev_record["metrics"]["all"]["accuracy"] <= dev_record["metrics"]["shared"]["accuracy"]


def test_shared_only_argmax_never_leaves_the_shared_classes(dev_record, clf, dev_data):
    shared = set(dev_record["shared_labels"])
    assert {p["pred_shared"] for p in dev_record["predictions"]} <= shared
    m = dev_record["metrics"]["shared"]
    assert m["predicted_outside_total"] == 0 and m["columns"] == m["rows"]
    # and the restricted argmax is the argmax of the renormalised shared probabilities
    probs = clf.probabilities(dev_data.images)
    idx = dev_data.shared
    expected = np.asarray(idx)[probs[:, idx].argmax(1)]
    assert [SHORT[i] for i in expected] == [p["pred_shared"] for p in dev_record["predictions"]]
    outside = dev_record["metrics"]["all"]["predicted_outside_total"]
    assert outside == sum(p["pred"] not in shared for p in dev_record["predictions"])


def test_stored_evaluation_reads_back(dev_record, run_dir):
    path = run_dir / "external" / f"{dev_record['id']}.json"
    assert path.is_file() and dev_record["stored_at"] == str(path)
    assert storage.EVAL_ID.match(dev_record["id"])
    back = storage.load_evaluation(run_dir, dev_record["id"])
    assert back == json.loads(json.dumps({k: v for k, v in dev_record.items() if k != "stored_at"}))
    assert back["dataset"]["path"] == str(EXTERNAL_DEV)
    assert back["mapping"] == {k: k for k in EXTERNAL_COUNTS}
    assert back["normalize"] == "none" and back["resize"] == "medmnist"
    rows = storage.list_evaluations(run_dir)
    assert dev_record["id"] in [r["id"] for r in rows]
    row = next(r for r in rows if r["id"] == dev_record["id"])
    assert row["accuracy_all"] == dev_record["metrics"]["all"]["accuracy"] and row["excluded"] == 0
    assert not list((run_dir / "external").glob(".*.tmp"))  # atomic writes leave nothing behind
    with pytest.raises(errors.ExternalError):
        storage.load_evaluation(run_dir, "../../etc/passwd")


def test_damaged_evaluation_file_is_skipped_in_listing(run_dir, dev_record):
    (run_dir / "external" / "20990101-000000-abcdef.json").write_text("{ not json")
    try:
        ids = [r["id"] for r in storage.list_evaluations(run_dir)]
        assert dev_record["id"] in ids and "20990101-000000-abcdef" not in ids
    finally:
        (run_dir / "external" / "20990101-000000-abcdef.json").unlink()


def test_reinhard_evaluation_and_cached_training_statistics(clf, dev_data, run_dir):
    record = scoring.evaluate(clf, dev_data, "reinhard", run_dir=run_dir, store=False)
    assert record["normalize"] == "reinhard" and "target" in record["normalization"]
    assert (run_dir / "stain_stats.json").is_file()
    assert "stored_at" not in record
    assert record["metrics"]["all"]["n"] == 100


def test_plain_resize_gives_the_model_size(clf):
    source = scan.scan(EXTERNAL_DEV)
    data = loading.load_images(source, clf.image_size, None, "plain", clf.labels)
    assert data.images.shape == (100, clf.image_size, clf.image_size, 3) and data.resize == "plain"


# -- wrong layouts ---------------------------------------------------------------------------------------

def test_messy_folder_is_counted_never_fatal(tmp_path, clf, run_dir):
    root = messy_dataset(tmp_path / "messy")
    source = scan.scan_folder(root)
    assert source.counts == {"Basophils": 2, "Lymphocytes": 2, "monocytes": 0, "Neutrophil": 3, "Smudge cells": 1}
    assert source.empty_classes == ["monocytes"]
    assert (source.not_images, source.loose_files, source.nested_files) == (1, 1, 1)
    mapped = mapping.build_mapping(source.classes, None, clf.labels)
    assert mapped == {"Basophils": "basophil", "Lymphocytes": "lymphocyte", "monocytes": "monocyte",
                       "Neutrophil": "neutrophil", "Smudge cells": None}
    data = loading.load_images(source, clf.image_size, mapped, "medmnist", clf.labels)
    assert len(data) == 5
    ex = data.excluded
    assert ex["unmapped"] == {"Smudge cells": 1} and ex["unreadable"] == 2
    assert ex["empty_classes"] == ["monocytes"] and ex["loose_files"] == 1 and ex["not_images"] == 1
    assert any("not_really.png" in m for m in ex["messages"])
    assert any("truncated.jpg" in m for m in ex["messages"])
    assert storage.excluded_total(ex) == 1 + 2 + 1 + 1
    record = scoring.evaluate(clf, data, "none", run_dir=run_dir, store=False)
    assert set(record["shared_labels"]) == {"basophil", "lymphocyte", "neutrophil"}
    assert record["metrics"]["shared"]["n"] == 5


def test_wrapper_folder_is_entered(tmp_path):
    save(tmp_path / "Raabin" / "Train" / "Basophil" / "a.png", cell_image(1))
    save(tmp_path / "Raabin" / "Train" / "Monocyte" / "b.png", cell_image(2))
    source = scan.scan_folder(tmp_path / "Raabin")
    assert source.counts == {"Basophil": 1, "Monocyte": 1}
    assert source.location.endswith("Train")


@pytest.mark.parametrize("layout", ["missing", "empty", "files_only"])
def test_folder_without_classes_is_a_clear_error(tmp_path, layout):
    root = tmp_path / "data"
    if layout == "empty":
        root.mkdir()
    elif layout == "files_only":
        (root).mkdir()
        (root / "notes.txt").write_text("x")
    with pytest.raises(errors.ExternalError):
        scan.scan_folder(root)


def test_only_unmapped_classes_cannot_be_scored(tmp_path, clf):
    save(tmp_path / "d" / "Smudge" / "a.png", cell_image(1))
    source = scan.scan_folder(tmp_path / "d")
    data = loading.load_images(source, clf.image_size, None, "medmnist", clf.labels)
    assert len(data) == 0 and data.excluded["unmapped"] == {"Smudge": 1}
    with pytest.raises(errors.ExternalError, match="No images to evaluate"):
        scoring.evaluate(clf, data, store=False)


def test_csv_input_with_bad_rows(tmp_path, clf):
    images = tmp_path / "imgs"
    a = save(images / "a.png", cell_image(1))
    save(images / "b.png", cell_image(2))
    (images / "bad.png").write_text("not an image")
    rows = [
        "path,label",
        "imgs/a.png,Lymphocyte",
        f"{a},lymphocytes",  # absolute path
        "imgs/b.png,IG",
        "imgs/bad.png,monocyte",  # unreadable
        "imgs/missing.png,monocyte",  # missing file
        "imgs/a.png",  # no label
        ",neutrophil",  # no path
        "",  # blank: ignored
        "imgs/notes.txt,neutrophil",  # not an image
        "imgs/b.png,Smudge",  # unknown class
    ]
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    source = scan.scan_csv(csv_file)
    assert source.kind == "csv"
    assert (source.bad_rows, source.missing_files, source.not_images) == (2, 1, 1)
    assert source.counts == {"IG": 1, "Lymphocyte": 1, "lymphocytes": 1, "monocyte": 1, "Smudge": 1}
    data = loading.load_images(source, clf.image_size, None, "medmnist", clf.labels)
    assert len(data) == 3
    assert data.excluded["unreadable"] == 1 and data.excluded["unmapped"] == {"Smudge": 1}
    assert sorted(SHORT[i] for i in data.labels) == ["immature granulocytes", "lymphocyte", "lymphocyte"]
    # without a header, and with a base folder for the relative paths
    plain = tmp_path / "plain.csv"
    plain.write_text("a.png,basophil\nb.png,basophil\n")
    assert scan.scan_csv(plain, images).counts == {"basophil": 2}


def test_unreadable_csv_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe\x00garbage\x00\x81")
    with pytest.raises(errors.ExternalError):
        scan.scan_csv(bad)
    with pytest.raises(errors.ExternalError):
        scan.scan_csv(tmp_path / "missing.csv")


# -- fine-tuning and the command line ----------------------------------------------------------------------

def test_stratified_halves():
    labels = np.array([0] * 3 + [1] * 12 + [2] * 37 + [3] * 1)
    tune, held = finetune.stratified_halves(labels, 0.5, seed=3)
    assert not set(tune) & set(held) and len(tune) + len(held) == len(labels)
    for c, n in ((0, 3), (1, 12), (2, 37)):
        assert 1 <= (labels[tune] == c).sum() < n and (labels[held] == c).sum() >= 1
    assert (labels[held] == 3).sum() == 1  # a single image is scored, never learnt from
    again = finetune.stratified_halves(labels, 0.5, seed=3)
    assert np.array_equal(again[0], tune)


def test_fine_tune_reports_held_out_apart_and_is_stored(clf, dev_data, dev_record, run_dir):
    before = clf.model.get_weights()[0].copy()
    result = finetune.fine_tune(clf, dev_data, "none", finetune.FineTuneConfig(epochs=1, lr=1e-4, seed=0),
                                run_dir=run_dir, eval_id=dev_record["id"])
    assert result["n_fine_tune"] + result["n_held_out"] == 100
    assert sum(result["held_out_counts"].values()) == result["n_held_out"]
    for part in ("zero_shot", "fine_tuned"):
        assert result[part]["all"]["n"] == result["n_held_out"]
        assert set(result[part]["shared"]["per_class"]) == set(EXTERNAL_COUNTS)
    assert np.array_equal(clf.model.get_weights()[0], before)  # the run's model is untouched
    stored = storage.load_evaluation(run_dir, dev_record["id"])
    assert stored["fine_tune"]["n_held_out"] == result["n_held_out"]
    assert stored["metrics"] == json.loads(json.dumps(dev_record["metrics"]))  # zero-shot result unchanged


def test_cli_external_prints_the_summary(run_dir, capsys):
    code = main(["external", "--run", str(run_dir), "--folder", str(EXTERNAL_DEV), "--normalize", "none"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out)
    for key in ("accuracy", "per_class", "confusion", "labels", "n_images", "excluded", "shared_only"):
        assert key in summary
    assert summary["n_images"] == 100 and summary["labels"] == SHORT
    assert {k: v["support"] for k, v in summary["per_class"].items()} == EXTERNAL_COUNTS
    assert np.asarray(summary["confusion"]).shape == (5, 8)
    assert np.asarray(summary["shared_only"]["confusion"]).shape == (5, 5)
    assert (run_dir / "external" / f"{summary['eval_id']}.json").is_file()


def test_cli_external_with_map_and_errors(run_dir, tmp_path, capsys):
    root = messy_dataset(tmp_path / "messy")
    code = main(["external", "--run", str(run_dir), "--folder", str(root), "--map", "Smudge cells=monocyte",
                 "--no-store", "--resize", "plain"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["n_images"] == 6 and summary["mapping"]["Smudge cells"] == "monocyte"
    assert summary["excluded"]["unreadable"] == 2 and "stored_at" not in summary
    assert main(["external", "--run", str(run_dir), "--folder", str(tmp_path / "nowhere")]) == 2
    assert "No folder" in capsys.readouterr().err
    assert main(["external", "--run", str(run_dir)]) == 2
    assert main(["external", "--run", str(run_dir), "--folder", str(root), "--map", "Nope=monocyte"]) == 2
    assert "no class 'Nope'" in capsys.readouterr().err


def test_fine_tune_settings_have_one_home():
    ft = finetune.FineTuneConfig()
    assert (ft.fraction, ft.epochs, ft.lr, ft.seed) == (0.5, 3, 1e-4, 0)
    assert finetune.FineTuneConfig(fraction=0.05, epochs=50).epochs == 50
    for field, value in (("fraction", 0.99), ("fraction", 0.0), ("epochs", 0), ("epochs", 51), ("epochs", 2.5),
                         ("lr", 0.0), ("lr", 1.0), ("seed", -1), ("fraction", "half")):
        with pytest.raises(errors.ExternalError, match=f"fine-tune {'learning rate' if field == 'lr' else field}"):
            finetune.FineTuneConfig(**{field: value})
    with pytest.raises(errors.ExternalError) as every:  # every problem at once, not one per submit
        finetune.FineTuneConfig(fraction=0.99, epochs=0, lr=1.0)
    assert str(every.value).count("must be between") == 3
    parser_defaults = {a.dest: a.default for a in build_parser()._subparsers._group_actions[0]
                       .choices["external"]._actions}
    assert (parser_defaults["fine_tune_fraction"], parser_defaults["fine_tune_epochs"],
            parser_defaults["fine_tune_lr"], parser_defaults["seed"]) == (ft.fraction, ft.epochs, ft.lr, ft.seed)


def test_cli_refuses_fine_tune_settings_out_of_range_before_scoring(run_dir, capsys):
    before = set((run_dir / "external").glob("*.json"))
    code = main(["external", "--run", str(run_dir), "--folder", str(EXTERNAL_DEV), "--fine-tune",
                 "--fine-tune-epochs", "99"])
    assert code == 2 and "fine-tune epochs must be between 1 and 50" in capsys.readouterr().err
    assert set((run_dir / "external").glob("*.json")) == before  # nothing scored or stored


def test_run_external_compares_normalisations_in_one_flow(clf, dev_data, run_dir):
    records = flow.run_external(clf, dev_data, "reinhard", compare=("none",), run_dir=run_dir, store=False)
    assert [r["normalize"] for r in records] == ["none", "reinhard"]
    assert all(r["n_images"] == 100 and "stored_at" not in r for r in records)
    # stored: one request, one evaluation, the comparison inside it (it used to store one per method)
    before = {r["id"] for r in storage.list_evaluations(run_dir)}
    main = flow.run_external(clf, dev_data, "reinhard", compare=("none",), run_dir=run_dir)[-1]
    added = [r for r in storage.list_evaluations(run_dir) if r["id"] not in before]
    assert [r["id"] for r in added] == [main["id"]] and added[0]["normalize"] == "reinhard"
    stored = storage.load_evaluation(run_dir, main["id"])
    assert stored["compared"]["none"] == records[0]["metrics"]
    table = report.comparison_table(report.compared_records(stored))
    assert list(table.columns) == ["none", "reinhard"]
    assert table.loc["Accuracy (all 8)", "none"] == records[0]["metrics"]["all"]["accuracy"]
    with pytest.raises(errors.ExternalError):
        flow.run_external(clf, dev_data, "sepia", run_dir=run_dir, store=False)


def test_a_record_written_before_schema_version_still_reads(dev_record, run_dir):
    """The layout external evaluations had before this version: per-class 'accuracy', no labels, no
    schema_version: listed, shown as Tables 14/15 and summarised as before."""
    old = json.loads(json.dumps({k: v for k, v in dev_record.items() if k not in ("schema_version", "stored_at")}))
    old["id"] = "20200101-000000-0ab1cd"
    for table in old["metrics"].values():
        for key in ("schema_version", "labels", "auc", "loss"):
            table.pop(key)
        for v in table["per_class"].values():
            v["accuracy"] = v["recall"]
    (run_dir / "external" / f"{old['id']}.json").write_text(json.dumps(old))
    try:
        assert old["id"] in [r["id"] for r in storage.list_evaluations(run_dir)]
        back = storage.load_evaluation(run_dir, old["id"])
        for mode in ("all", "shared"):
            assert scoring.table14(back["metrics"][mode]) == scoring.table14(dev_record["metrics"][mode])
        new, legacy = scoring.summary(dev_record), scoring.summary(back)
        assert {k: v for k, v in legacy.items() if k not in ("eval_id", "stored_at")} == \
            {k: v for k, v in new.items() if k not in ("eval_id", "stored_at")}
    finally:
        (run_dir / "external" / f"{old['id']}.json").unlink()


# -- what the page shows of stored records (core.validation.external.report) ------------------------------------

def scores(accuracy: float, balanced: float, recalls: dict[str, float]) -> dict:
    return {"accuracy": accuracy, "balanced_accuracy": balanced,
            "per_class": {k: {"recall": v} for k, v in recalls.items()}}


def test_comparison_table_puts_normalisations_side_by_side():
    records = [{"normalize": "none", "metrics": {"all": scores(0.5, 0.4, {"monocyte": 0.25, "neutrophil": 0.75}),
                                                 "shared": scores(0.6, 0.45, {})}},
               {"normalize": "reinhard", "metrics": {"all": scores(0.7, 0.65, {"monocyte": 0.5, "neutrophil": 0.9}),
                                                     "shared": scores(0.8, 0.7, {})}}]
    table = report.comparison_table(records)
    assert list(table.columns) == ["none", "reinhard"]
    assert list(table.index) == ["Accuracy (all 8)", "Balanced accuracy (all 8)", "Accuracy (shared)",
                                 "Balanced accuracy (shared)", "Recall monocyte (all 8)", "Recall neutrophil (all 8)"]
    assert table["reinhard"].tolist() == [0.7, 0.65, 0.8, 0.7, 0.5, 0.9]
    assert table.loc["Accuracy (shared)", "none"] == 0.6


def test_fine_tune_table_has_a_row_per_model():
    ft = {"zero_shot": {"all": scores(0.5, 0.4, {"monocyte": 0.2}), "shared": scores(0.55, 0.4, {})},
          "fine_tuned": {"all": scores(0.9, 0.85, {"monocyte": 0.8}), "shared": scores(0.95, 0.9, {})}}
    table = report.fine_tune_table(ft)
    assert list(table.index) == ["Zero-shot (same held-out images)", "Fine-tuned"]
    assert list(table.columns) == ["accuracy (all 8)", "accuracy (shared)", "balanced accuracy (all 8)",
                                   "recall monocyte"]
    assert table.loc["Fine-tuned"].tolist() == [0.9, 0.95, 0.85, 0.8]


def test_sampled_cells_are_distinct_sorted_and_repeatable():
    pick = report.sample_indices(100, 8)
    assert len(set(pick.tolist())) == 8 and pick.tolist() == sorted(pick.tolist()) and pick.max() < 100
    assert np.array_equal(pick, report.sample_indices(100, 8))
    assert report.sample_indices(3, 8).tolist() == [0, 1, 2]


def test_correct_and_wrong_cells_from_stored_predictions():
    labels = ["basophil", "monocyte", "neutrophil"]
    calls = [("monocyte", "monocyte"), ("monocyte", "neutrophil"), ("neutrophil", "neutrophil"),
             ("basophil", "basophil"), ("neutrophil", "monocyte"), ("monocyte", "monocyte")]
    record = {"labels": labels, "predictions": [{"true": t, "pred": p} for t, p in calls]}
    groups = report.correct_and_wrong(record, len(calls), per_group=3)
    assert (groups["correct"].count, groups["wrong"].count) == (4, 2)
    assert groups["correct"].total == groups["wrong"].total == 6
    assert set(groups["correct"].indices.tolist()) <= {0, 2, 3, 5} and len(groups["correct"].indices) == 3
    assert groups["wrong"].indices.tolist() == [1, 4]
    assert report.correct_and_wrong(record, 7, per_group=3) is None  # the images changed since
    right = report.correct_and_wrong({"labels": labels, "predictions": [{"true": "monocyte", "pred": "monocyte"}]},
                                     1, per_group=3)
    assert right["wrong"].indices.tolist() == [] and right["wrong"].count == 0


def test_correct_and_wrong_cells_of_a_real_evaluation(dev_record, dev_data):
    groups = report.correct_and_wrong(dev_record, len(dev_data), per_group=4)
    assert groups["correct"].count + groups["wrong"].count == len(dev_data) == 100
    for group in groups.values():
        assert len(group.indices) == min(4, group.count)
        for i in group.indices:
            p = dev_record["predictions"][i]
            assert (p["true"] == p["pred"]) == (group is groups["correct"])
    assert groups["correct"].count / 100 == pytest.approx(dev_record["metrics"]["all"]["accuracy"])


def test_source_signature_tells_listings_apart(tmp_path):
    for name, n in (("Monocyte", 2), ("Neutrophil", 1)):
        for i in range(n):
            save(tmp_path / "data" / name / f"{i}.png", cell_image(i))
    first = scan.scan_folder(tmp_path / "data")
    assert first.signature() == scan.scan_folder(tmp_path / "data").signature()
    assert first.signature()[0] == 3 and first.signature()[3] == (("Monocyte", 2), ("Neutrophil", 1))
    save(tmp_path / "data" / "Neutrophil" / "9.png", cell_image(9))
    assert scan.scan_folder(tmp_path / "data").signature() != first.signature()


def test_accuracy_text_and_the_cross_lab_sentence_carry_the_numbers():
    record = {"n_images": 100, "shared_labels": ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"],
              "metrics": {"all": {"accuracy": 0.62, "accuracy_ci95": [0.522, 0.709]},
                          "shared": {"accuracy": 0.7, "accuracy_ci95": [0.6, 0.78]}}}
    assert report.accuracy_text(record["metrics"]["all"]) == "0.620 (95% CI 0.522–0.709)"
    lower = report.cross_lab_sentence(record, 0.95)
    assert lower.startswith("Why lower: the run scored 0.950 on its own test split, but here it scores 0.620 over "
                            "all 8 classes and 0.700 over the 5 shared classes on 100 cells")
    assert "different staining, microscope, camera and framing" in lower and "applied unchanged" in lower
    assert "no drop" in report.cross_lab_sentence(record, 0.5)
    assert report.cross_lab_sentence(record, None).startswith("On this set it scores 0.620 over all 8 classes")
