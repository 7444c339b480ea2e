"""The study's Tables 1-15 as data: counts per table, spot values typed from the paper, every number checked
against the study text, and the Table 13 batch-32 columns marked unreliable."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from core.config import ARCHITECTURES, OPTIMIZERS, SIZES
from core.data.registry import label_names, short_label
from core.store import reference

STUDY = Path(__file__).resolve().parents[2] / "shared" / "reference" / "study.txt"

# numbers per table: rows x columns as printed
COUNTS = {1: 6 * 2, 2: 6 * 3, 3: 6 * 3, 4: 6 * 4, 5: 6 * 3, 6: 6 * 6, 7: 6 * 6, 8: 6 * 6, 9: 6 * 3,
          10: 8 * 8, 11: 4 * 2, 12: 2 * 12, 13: 8 * 12, 14: 5 * 4, 15: 5 + 1}


def one(df, **where):
    for k, v in where.items():
        df = df[df[k].isna()] if v is None else df[df[k] == v]
    assert len(df) == 1, (where, len(df))
    return df.iloc[0]


def test_counts_per_table():
    df = reference.records()
    assert dict(Counter(df["table"])) == COUNTS
    assert sorted(reference.tables()) == list(range(1, 16))
    assert all(t["caption"] and t["rows"] and t["columns"] for t in reference.tables().values())


def test_spot_values_typed_from_the_study():
    t = reference.table
    assert one(t(1), batch_size=16, split="val", metric="accuracy")["value"] == 0.9690
    assert one(t(2), class_weights=True, attention=False, split="val", metric="loss")["value"] == 0.0899
    assert one(t(3), optimizer="rmsprop", split="val", metric="loss")["value"] == 2.4937
    assert one(t(4), momentum=0.7, split="train", metric="accuracy")["value"] == 0.9639
    assert one(t(5), lr=1e-4, split="val", metric="accuracy")["value"] == 0.9579
    assert one(t(6), lr=3e-4, split="val", metric="accuracy")["value"] == 0.9352
    assert one(t(7), lr=1e-2, split="val", metric="accuracy")["value"] == 0.7699
    assert one(t(8), optimizer="sgd", attention=False, split="val", metric="accuracy")["value"] == 0.9737
    assert one(t(9), dropout=0.4, split="val", metric="loss")["value"] == 0.1402
    assert one(t(10), arch="resnet50", size=64, metric="recall", **{"class": "monocyte"})["value"] == 0.81
    assert one(t(11), arch="resnet101", size=224, metric="accuracy")["value"] == 0.9880
    assert one(t(12), arch="resnet50", size=128, batch_size=32, metric="accuracy")["value"] == 0.9860
    assert one(t(12), arch="resnet101", size=128, batch_size=16, metric="auc")["value"] == 0.999
    assert one(t(13), arch="resnet101", size=64, batch_size=16, **{"class": "monocyte"})["value"] == 0.90
    assert one(t(13), arch="resnet50", size=64, batch_size=16, **{"class": "immature granulocytes"})["value"] == 0.92
    assert one(t(14), metric="f1", **{"class": "monocyte"})["value"] == 0.40
    assert one(t(14), metric="support", **{"class": "neutrophil"})["value"] == 532
    assert one(t(15), **{"class": None})["value"] == 0.82


def test_configurations_use_this_projects_values():
    df = reference.records()
    assert set(df["arch"]) <= set(ARCHITECTURES)
    assert set(df["size"]) <= set(SIZES)
    assert set(df["optimizer"]) <= set(OPTIMIZERS)
    assert set(df["split"]) <= set(reference.SPLITS) and set(df["metric"]) <= set(reference.METRICS)
    assert set(df["class"].dropna()) <= {short_label(label) for label in label_names()}
    assert df.loc[df["optimizer"] != "sgd", "momentum"].isna().all()
    assert df.loc[df["optimizer"] == "sgd", "momentum"].notna().all()
    assert set(df.loc[df["table"].isin([14, 15]), "split"]) == {"external"}
    assert set(df.loc[df["table"].isin([14, 15]), "dataset"]) == {"Raabin-WBC"}
    assert set(df.loc[~df["table"].isin([14, 15]), "dataset"]) == {"BloodMNIST"}
    # Table 2: the original model has neither, then class weights, then both
    flags = reference.table(2).drop_duplicates("column")[["attention", "class_weights"]].values.tolist()
    assert flags == [[False, False], [False, True], [True, True]]


def test_table_13_batch_32_columns_are_unreliable_and_nothing_else():
    df = reference.records()
    bad = df[~df["reliable"]]
    assert len(bad) == 48
    assert set(bad["table"]) == {13} and set(bad["batch_size"]) == {32}
    assert bad["note"].str.contains("wrong order").all()
    assert df[(df["table"] == 13) & (df["batch_size"] == 16)]["reliable"].all()


def test_repeated_experiments_agree_across_tables():
    """Table 1's batch-32 column is Table 2's original model, Table 8's and 9's; Tables 11 and 12 share four
    models; values() would raise if a repeat differed."""
    val = reference.values("val", "accuracy")
    original = one(val, optimizer="adam", lr=1e-4, batch_size=32, dropout=0.3, attention=False, class_weights=False)
    assert original["value"] == 0.9743 and original["tables"] == "1, 2, 8, 9"
    test = reference.values("test", "accuracy")
    assert len(test) == 12 and one(test, arch="resnet101", size=224, batch_size=16)["tables"] == "11, 12"
    f1 = reference.values("test", "f1", "monocyte")
    assert len(f1) == 12 and f1["reliable"].sum() == 6
    assert reference.values("test", "loss").empty


def numbers_in_study_rows(first_line: int, last_line: int, row_label: str) -> list[float]:
    """Every number on the study's tab-separated table lines for `row_label` (several tables can share a line)."""
    lines = STUDY.read_text(encoding="utf-8").splitlines()[first_line - 1:last_line]
    out = []
    for line in lines:
        cells = [re.sub(r"</?b>", "", c).strip() for c in line.split("\t")]
        if cells[0] == row_label:
            out += [float(c) for c in cells[1:] if re.fullmatch(r"\d+(\.\d+)?", c)]
    return out


# (tables sharing the text lines, first line, last line, row labels) in study.txt
LAYOUT = [
    ((1,), 44, 50), ((2,), 58, 64), ((3,), 72, 79), ((4, 5), 85, 92), ((6, 7), 98, 105), ((8,), 111, 118),
    ((9,), 126, 132),
]
METRIC_ROWS = {("train", "accuracy"): "Training Accuracy", ("train", "auc"): "Training AUC",
               ("train", "loss"): "Training Loss", ("val", "accuracy"): "Validation Accuracy",
               ("val", "auc"): "Validation AUC", ("val", "loss"): "Validation Loss"}


@pytest.mark.skipif(not STUDY.is_file(), reason="the study text is not at ../shared/reference/study.txt")
def test_every_number_matches_the_study_text():
    df = reference.records()
    for tables, first, last in LAYOUT:
        for (split, metric), label in METRIC_ROWS.items():
            ours = df[df["table"].isin(tables) & (df["split"] == split) & (df["metric"] == metric)]
            assert list(ours["value"]) == numbers_in_study_rows(first, last, label), (tables, label)
    # per-class tables: rows are cell types as printed
    for number, first, last in ((10, 149, 158), (13, 194, 203)):
        t = reference.table(number)
        for printed, group in t.groupby("row", sort=False):
            assert list(group["value"]) == numbers_in_study_rows(first, last, printed), (number, printed)
    for printed, group in reference.table(11).groupby("row", sort=False):
        assert list(group["value"]) == numbers_in_study_rows(160, 164, printed)
    for printed, group in reference.table(12).groupby("row", sort=False):
        assert list(group["value"]) == numbers_in_study_rows(184, 188, printed)
    raabin = df[df["table"].isin([14, 15])]
    for printed, group in raabin.groupby("row", sort=False):
        expected = numbers_in_study_rows(211, 217, printed) if printed != "Overall" else [0.82]
        assert list(group["value"]) == expected, printed


def test_the_data_file_is_plain_json_one_record_per_line():
    text = reference.DATA_FILE.read_text(encoding="utf-8")
    doc = json.loads(text)
    assert len(doc["records"]) == sum(COUNTS.values()) == 434
    assert text.count('{"table": ') == 434
