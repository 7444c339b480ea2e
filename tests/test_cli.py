"""`python -m core ...` as a user runs it: real subprocesses, real data, real (tiny) models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PBC_SAMPLES, PROJECT_ROOT
from PIL import Image

from core.config import RunConfig
from core.data import registry
from core.evaluation.predictions import PREDICTIONS_FILE, VAL_PREDICTIONS_FILE
from core.jobs.presets import PRESETS, PRESETS_BY_KEY
from core.store.io import RUN_ID_PATTERN
from core.store.runs import RunStore, open_run

RUN_FILES = {"config.json", "history.csv", "metrics.json", "model.keras", "train.log",
             PREDICTIONS_FILE,  # the test pass, kept for Confusions
             VAL_PREDICTIONS_FILE}  # the validation pass, kept for calibration's plots
TIMEOUT = 600  # the machine is shared; TensorFlow start-up alone can take a while under load
JPEGS = [PBC_SAMPLES / "neutrophil", PBC_SAMPLES / "platelet"]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """Artifacts and the data root in temporary folders, so nothing touches the project or ~/.medmnist."""
    base = tmp_path_factory.mktemp("cli")
    (base / "empty-data").mkdir()
    env = dict(os.environ)
    env.update({"CELLSCOPE_ARTIFACTS": str(base / "artifacts"), registry.DATA_DIR_ENV: str(base / "empty-data"),
                "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    return env


def cli(env: dict[str, str], *args: str, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *phrases: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def sample(folder: Path) -> Path:
    return sorted(folder.glob("*.jpg"))[0]


# -- train and runs --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(cli_env, tiny_npz, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    runs_dir = tmp_path_factory.mktemp("cli-runs") / "runs"
    # a preset with flags over it: the recipe's optimiser, schedule and flips, the flags' network and size
    proc = cli(cli_env, "train", "--preset", "quick-28", "--data", tiny_npz, "--arch", "resnet18", "--epochs", "1",
               "--limit-train", "64", "--batch-size", "32", "--no-rot90", "--runs-dir", runs_dir, "--tag", "cli-test")
    return proc, runs_dir


def test_train_prints_complete_run_dir_last(cli_run, tiny_npz):
    proc, runs_dir = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    run_dir = Path(last)
    assert run_dir.parent == runs_dir
    assert RUN_ID_PATTERN.match(run_dir.name)
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    run = open_run(run_dir)
    c = run.config
    assert (c.arch, c.weights, c.size, c.epochs, c.limit_train, c.batch_size, c.tags) == \
        ("resnet18", "none", 28, 1, 64, 32, ("cli-test",))  # size taken from the file
    quick = PRESETS_BY_KEY["quick-28"].base
    assert (c.optimizer, c.lr, c.lr_schedule, c.weight_decay, c.label_smoothing, c.aug_vflip, c.aug_rot90) == \
        (quick["optimizer"], quick["lr"], quick["lr_schedule"], quick["weight_decay"], quick["label_smoothing"],
         True, False)  # the preset's, except what a flag undid
    assert c.data == str(tiny_npz)
    m = run.metrics
    assert m["dataset"]["n_train"] <= 64 and m["epochs_run"] == 1 and m["best_epoch"] == 1
    assert 0.0 <= m["val"]["accuracy"] <= 1.0 and m["test"]["n"] == m["dataset"]["n_test"]
    assert len(run.history()) == 1
    assert "epoch 1/1" in proc.stderr  # progress and the log go to stderr, the result to stdout
    assert not (runs_dir / ".incomplete").exists() or not any((runs_dir / ".incomplete").iterdir())


def test_runs_lists_the_run(cli_run, cli_env):
    proc, runs_dir = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = Path(proc.stdout.strip().splitlines()[-1]).name
    listed = cli(cli_env, "runs", "--runs-dir", runs_dir)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.strip().splitlines()
    assert header.split()[:3] == ["run_id", "arch", "px"]
    assert len(rows) == 1 and rows[0].startswith(run_id)
    assert "resnet18" in rows[0] and " 28 " in rows[0] and "none" in rows[0]

    as_json = cli(cli_env, "runs", "--runs-dir", runs_dir, "--json", "--best", "--reindex")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert [r["run_id"] for r in rows] == [run_id]
    assert "config_json" not in rows[0]
    assert rows[0]["val_accuracy"] == open_run(runs_dir / run_id).metrics["val"]["accuracy"]


def test_a_damaged_index_says_how_to_repair_it_and_the_repair_works(cli_run, cli_env, tmp_path):
    _, runs_dir = cli_run
    mirror = tmp_path / "artifacts" / "runs"
    shutil.copytree(runs_dir, mirror)
    index = mirror.parent / "index.sqlite"
    index.write_bytes(b"not a database" * 100)
    error = assert_one_line_error(cli(cli_env, "runs", "--runs-dir", mirror), str(index))
    hint = error.rpartition(": ")[2]
    assert hint == "python -m core runs --reindex"
    repaired = cli(cli_env, *hint.split()[3:], "--runs-dir", mirror)
    assert repaired.returncode == 0 and "moved it aside" in repaired.stderr, repaired.stderr
    assert len(repaired.stdout.strip().splitlines()) == 2  # header and the one run


def test_runs_empty_store(cli_env, tmp_path):
    proc = cli(cli_env, "runs", "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 0
    assert "no runs yet" in proc.stdout


def test_runs_default_dir_from_env(cli_env):
    """Without --runs-dir the store is $CELLSCOPE_ARTIFACTS/runs."""
    proc = cli(cli_env, "runs", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == []
    assert (Path(cli_env["CELLSCOPE_ARTIFACTS"]) / "runs").is_dir()
    assert not RunStore(Path(cli_env["CELLSCOPE_ARTIFACTS"]) / "runs").list_runs()


def test_train_flags_are_generated_from_the_settings():
    from core.cli import build_parser, config_from_args
    from core.config import SETTINGS, RunConfig

    parser = build_parser()
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    help_text = train.format_help()
    for s in SETTINGS.values():
        assert s.cli_flag in help_text, s.name
    args = parser.parse_args(["train", "--no-hflip", "--vflip", "--rot90", "--tag", "a", "--tag", "b",
                              "--batch-size", "16", "--lr", "0.001", "--arch", "resnet18", "--class-weights",
                              "--bn-recalibration", "on", "--limit-train", "100"])
    assert config_from_args(args) == RunConfig(aug_hflip=False, aug_vflip=True, aug_rot90=True, tags=("a", "b"),
                                               batch_size=16, lr=0.001, arch="resnet18", weights="none",
                                               class_weights=True, bn_recalibration="on", limit_train=100)
    assert config_from_args(parser.parse_args(["train"])) == RunConfig()


def test_submit_names_grids_and_presets_by_the_one_rule(cli_env, tmp_path):
    from core.jobs.queue import JobQueue

    runs_dir = tmp_path / "runs"
    proc = cli(cli_env, "submit", "--grid", "batch_size=16, 32", "--repeats", "2", "--no-start",
               "--runs-dir", runs_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("queued 4 job(s)")
    proc = cli(cli_env, "submit", "--preset", "table1", "--no-start", "--runs-dir", runs_dir)
    assert proc.returncode == 0, proc.stderr
    jobs = JobQueue(RunStore(runs_dir)).list()
    assert sorted({j.sweep for j in jobs}) == ["batch_size=16,32 x2 seeds", "table1"]
    grid = sorted((j.config.batch_size, j.config.seed) for j in jobs if j.sweep != "table1")
    assert grid == [(16, 0), (16, 1), (32, 0), (32, 1)]
    assert sorted(j.config.batch_size for j in jobs if j.sweep == "table1") == [16, 32]
    assert {j.status for j in jobs} == {"queued"}


def test_jobs_acts_as_the_local_admin_on_anyones_jobs(tmp_path, capsys):
    """The command line is the machine's administrator: it cancels and deletes a trainer's job, sets the
    limit, and lists owners."""
    from core.access.roles import User
    from core.cli import main
    from core.jobs.queue import JobQueue

    runs_dir = tmp_path / "artifacts" / "runs"
    queue = JobQueue(RunStore(runs_dir))
    job_id = queue.submit(RunConfig(), User("alice", ("trainer",)))
    assert main(["jobs", "--cancel", str(job_id), "--max-concurrent", "3", "--runs-dir", str(runs_dir)]) == 0
    assert queue.get(job_id).status == "cancelled" and queue.max_concurrent == 3
    capsys.readouterr()
    assert main(["jobs", "--json", "--runs-dir", str(runs_dir)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(j["id"], j["owner"], j["status"]) for j in listed] == [(job_id, "alice", "cancelled")]
    assert main(["jobs", "--delete", str(job_id), "--runs-dir", str(runs_dir)]) == 0
    assert queue.list() == []
    assert main(["jobs", "--delete", str(job_id), "--runs-dir", str(runs_dir)]) == 2  # one line, no traceback
    assert capsys.readouterr().err.strip() == f"error: no job {job_id}"


def test_submit_bad_values_are_one_line_errors(cli_env, tmp_path):
    runs = ("--no-start", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(cli(cli_env, "submit", "--grid", "lr=fast", *runs), "lr", "not a valid float")
    assert_one_line_error(cli(cli_env, "submit", "--grid", "seed=1,2", *runs), "seed", "repeats")
    assert_one_line_error(cli(cli_env, "submit", "--preset", "table99", *runs), "unknown preset 'table99'")
    assert_one_line_error(cli(cli_env, "submit", "--grid", "lr", *runs), "--grid takes FIELD=V1,V2")
    assert_one_line_error(cli(cli_env, "submit", "--preset", "table1", "--batch-size", "8", *runs),
                          "preset table1 sweeps batch_size")
    assert_one_line_error(cli(cli_env, "submit", "--preset", "table1", "--grid", "lr=1e-3", *runs), "give one")


def test_train_preset_flags_override_and_bad_combinations_are_one_line_errors(cli_env, tiny_npz, tmp_path):
    from core.cli import build_parser, config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--preset", "quick-28", "--epochs", "2", "--no-vflip", "--tag", "x"])
    expected = RunConfig(**{**PRESETS_BY_KEY["quick-28"].base, "epochs": 2, "aug_vflip": False, "tags": ("x",)})
    assert config_from_args(args, PRESETS_BY_KEY["quick-28"].base) == expected
    runs = ("--runs-dir", tmp_path / "runs")
    assert_one_line_error(cli(cli_env, "train", "--preset", "table12", *runs), "12 runs", "submit --preset table12")
    assert_one_line_error(cli(cli_env, "train", "--preset", "nope", *runs), "unknown preset 'nope'")
    assert_one_line_error(cli(cli_env, "train", "--preset", "scratch-64", "--data", tiny_npz, *runs),
                          "preset scratch-64 is for 64 px", "add --size 28")
    assert_one_line_error(cli(cli_env, "train", "--size", "64", "--data", tiny_npz, *runs), "--size 64 but")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_submit_a_recipe_with_overrides_queues_the_preset_with_them(cli_env, tiny_npz, tmp_path):
    from core.jobs.queue import JobQueue

    runs_dir = tmp_path / "runs"
    proc = cli(cli_env, "submit", "--preset", "quick-28", "--data", tiny_npz, "--epochs", "1", "--repeats", "2",
               "--no-start", "--runs-dir", runs_dir)
    assert proc.returncode == 0, proc.stderr
    jobs = JobQueue(RunStore(runs_dir)).list()
    base = PRESETS_BY_KEY["quick-28"].base
    assert sorted(j.config.seed for j in jobs) == [0, 1] and {j.sweep for j in jobs} == {"quick-28 x2 seeds"}
    assert {j.config for j in jobs} == {RunConfig(**{**base, "epochs": 1, "data": str(tiny_npz), "seed": s})
                                       for s in (0, 1)}


def test_presets_lists_every_preset_with_its_measured_figures(cli_env):
    proc = cli(cli_env, "presets")
    assert proc.returncode == 0, proc.stderr
    for p in PRESETS:
        assert f"{p.key:<11} {p.title}" in proc.stdout
    for p in (p for p in PRESETS if p.kind == "recipe"):
        block = proc.stdout.split(f"{p.key:<11} ", 1)[1].split("\n\n", 1)[0]
        assert "settings: arch=compactresnet" in block and "measured: test accuracy" in block, block
    listed = json.loads(cli(cli_env, "presets", "--json").stdout)
    assert [p["key"] for p in listed] == [p.key for p in PRESETS]
    assert listed[-1]["runs"] == 12 and listed[-1]["grid"]["size"] == [224, 128, 64]


# -- evaluate, predict, gradcam on the shared trained run --------------------------------------------------------

def test_evaluate_prints_val_and_test(cli_env, trained_run, tiny_npz):
    proc = cli(cli_env, "evaluate", "--run", trained_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["run"] == str(trained_run)
    assert out["data"] == str(tiny_npz)
    stored = open_run(trained_run).metrics
    for split in ("val", "test"):
        m = out[split]
        assert m["n"] == stored[split]["n"]
        assert len(m["labels"]) == 8 and len(m["confusion"]) == 8
        assert sum(map(sum, m["confusion"])) == m["n"]
        # the same model on the same images: the stored (once-evaluated) figures are reproduced
        assert m["accuracy"] == pytest.approx(stored[split]["accuracy"], abs=2 / m["n"])


def test_predict_good_and_bad_files(cli_env, trained_run, tmp_path):
    good = [sample(folder) for folder in JPEGS]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image\n")
    proc = cli(cli_env, "predict", "--run", trained_run, good[0], bad, good[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [line["file"] for line in lines] == [str(good[0]), str(bad), str(good[1])]
    labels = set(registry.label_names())
    for line in (lines[0], lines[2]):
        assert set(line) == {"file", "label", "confidence", "probabilities"}
        assert line["label"] in labels
        assert set(line["probabilities"]) == labels
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert line["confidence"] == pytest.approx(max(line["probabilities"].values()), abs=1e-6)
        assert line["probabilities"][line["label"]] == pytest.approx(line["confidence"], abs=1e-6)
    assert set(lines[1]) == {"file", "error"}
    assert "notes.png" in lines[1]["error"] and "not an image" in lines[1]["error"]


def test_predict_only_bad_files_fails(cli_env, trained_run, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    proc = cli(cli_env, "predict", "--run", trained_run, empty, missing)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [set(line) for line in lines] == [{"file", "error"}] * 2
    assert "empty" in lines[0]["error"] and "cannot read" in lines[1]["error"]


def test_gradcam_writes_png(cli_env, trained_run, tmp_path):
    image = sample(PBC_SAMPLES / "eosinophil")
    out = tmp_path / "cams" / "eo.png"
    proc = cli(cli_env, "gradcam", "--run", trained_run, image, "--out", out, "--target", "platelet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["out"] == str(out) and info["file"] == str(image)
    assert info["explained"] == "platelet" and info["method"] == "gradcam"
    assert info["label"] in registry.label_names() and info["layer"]
    with Image.open(out) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        arr = np.asarray(png)
    h, w = arr.shape[:2]
    assert h >= 28 and w == 3 * h + 8  # original | heatmap | overlay with two 4 px gaps
    assert arr[:, h:h + 4].min() == 255  # the white gap
    assert not np.array_equal(arr[:, :h], arr[:, -h:])  # the overlay differs from the original


# -- user errors: one line, exit 2, no traceback ------------------------------------------------------------------

def test_train_bad_npz(cli_env, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((4, 28, 28, 3), np.float32))
    line = assert_one_line_error(cli(cli_env, "train", "--data", bad, "--arch", "resnet18", "--epochs", "1",
                                     "--runs-dir", tmp_path / "runs"), "bad.npz")
    assert "lacks" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.json"))


def test_train_text_file_as_npz(cli_env, tmp_path):
    bad = tmp_path / "text.npz"
    bad.write_text("hello")
    assert_one_line_error(cli(cli_env, "train", "--data", bad, "--runs-dir", tmp_path / "runs"),
                          "text.npz is not an .npz file")


def test_train_resnet18_imagenet_refused(cli_env, tmp_path):
    line = assert_one_line_error(cli(cli_env, "train", "--arch", "resnet18", "--weights", "imagenet",
                                     "--runs-dir", tmp_path / "runs"), "weights", "ImageNet", "resnet18")
    assert "none" in line


def test_train_invalid_setting(cli_env, tmp_path):
    assert_one_line_error(cli(cli_env, "train", "--epochs", "0", "--runs-dir", tmp_path / "runs"),
                          "epochs: must be 1..1000")


def test_train_size_mismatch_with_data(cli_env, tiny_npz, tmp_path):
    assert_one_line_error(cli(cli_env, "train", "--data", tiny_npz, "--size", "64", "--arch", "resnet18",
                              "--runs-dir", tmp_path / "runs"), "--size 64", "28 px")


def test_download_existing_file_with_wrong_md5(cli_env, tmp_path):
    """Decided locally without the network: a file in the way with the wrong MD5 is reported, not replaced."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "bloodmnist.npz").write_bytes(b"stale")
    assert_one_line_error(cli(cli_env, "download", "--size", "28", "--root", root), "MD5 differs")
    assert (root / "bloodmnist.npz").read_bytes() == b"stale"


def test_download_unknown_size_is_usage_error(cli_env):
    proc = cli(cli_env, "download", "--size", "100")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
