"""Shared fixtures. Tests read the real data in ../shared/data in place and never copy it into the project;
small subsets are written to pytest's temporary folders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (PROJECT_ROOT.parent / "shared" / "data").resolve()
NPZ_28 = SHARED_DATA / "pbc_bloodmnist_28.npz"
NPZ_64 = SHARED_DATA / "pbc_bloodmnist_64.npz"
PBC_SAMPLES = SHARED_DATA / "pbc_samples"
EXTERNAL_DEV = SHARED_DATA / "external_dev"


@pytest.fixture(autouse=True, scope="session")
def error_details_for_tests():
    """Served use never sends tracebacks to the browser (`client.showErrorDetails = "none"` in
    .streamlit/config.toml); AppTest runs in-process, so the tests see a bug's message and traceback."""
    from streamlit import config as st_config

    st_config.get_config_options()  # read .streamlit/config.toml first, so it cannot override this later
    st_config.set_option("client.showErrorDetails", "full")


def pytest_configure(config):
    if not NPZ_28.is_file():
        raise pytest.UsageError(f"real test data not found at {SHARED_DATA} (expected ../shared/data)")


@pytest.fixture(scope="session", autouse=True)
def data_roots(tmp_path_factory) -> tuple[Path, ...]:
    """The folders tests may type into pages, configured the real way ($CELLSCOPE_DATA_ROOTS, read by
    core.access.settings): the shared real data and pytest's temporary folders (subprocesses inherit it)."""
    roots = (SHARED_DATA, tmp_path_factory.getbasetemp().resolve())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLSCOPE_DATA_ROOTS", os.pathsep.join(map(str, roots)))
        yield roots


# What a training job prepares at its end in tests (core.inference.precompute.job_steps): every step but the
# heatmap-faithfulness measurement, which alone costs more than a tiny test job; test_precompute and test_road
# run it (and precompute_all with every step) themselves, and `trained_run` carries its result.
JOB_STEPS_IN_TESTS = "test_predictions,ood_stats,cell_framing,stain_target,calibration"


@pytest.fixture(scope="session", autouse=True)
def job_precompute_steps() -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLSCOPE_JOB_PRECOMPUTE", JOB_STEPS_IN_TESTS)  # job processes inherit it
        yield


def write_subset(source: Path, target: Path, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Path:
    """A stratified slice of a real MedMNIST npz, in the same layout."""
    from core.data.dataset import stratified_subset

    arrays = {}
    with np.load(source) as npz:
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            labels = npz[f"{split}_labels"]
            index = stratified_subset(labels[:, 0], n, seed)
            arrays[f"{split}_images"] = npz[f"{split}_images"][index]
            arrays[f"{split}_labels"] = labels[index]
    np.savez(target, **arrays)
    return target


def mirror_run(run: Path, artifacts: Path) -> Path:
    """A store under `artifacts` holding `run`: small files copied, model.keras symlinked, nothing derived."""
    from core.store.runs import MODEL_FILE, RunStore

    target = artifacts / "runs" / run.name
    target.mkdir(parents=True)
    for f in run.iterdir():
        if f.name == MODEL_FILE:
            (target / f.name).symlink_to(f.resolve())
        elif f.is_file() and f.suffix in (".json", ".csv", ".log"):
            shutil.copy(f, target / f.name)
    RunStore(artifacts / "runs").reindex()
    return target


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    """About 256 train / 128 val / 128 test real 28 px images (stratified, all 8 classes)."""
    return write_subset(NPZ_28, tmp_path_factory.mktemp("data") / "tiny28.npz", 256, 128, 128)


@pytest.fixture(scope="session")
def tiny_npz_64(tmp_path_factory) -> Path:
    return write_subset(NPZ_64, tmp_path_factory.mktemp("data64") / "tiny64.npz", 128, 64, 64)


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "artifacts" / "runs"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_npz) -> Path:
    """One real, tiny ResNet-18 run (1 epoch on 256 images) shared by CLI, CAM and page tests. It keeps the
    full-resolution stem (28/14/7/4 px block maps), which the CAM and Classify page tests read."""
    from core.config import RunConfig
    from core.inference import precompute
    from core.store.runs import RunStore
    from core.training.trainer import train

    runs = tmp_path_factory.mktemp("shared-artifacts") / "runs"
    config = RunConfig(data=str(tiny_npz), size=28, arch="resnet18", weights="none", epochs=1,
                       batch_size=32, seed=1, tags=("fixture",), resnet18_stem="full")
    run = train(config, RunStore(runs), echo=None).path
    # measured once here, so the pages' default heatmap is ready in every mirror (a .json file) instead of
    # being measured again in the background of each page test; on a small sample (the mechanism, not the
    # numbers: test_road measures with its own settings)
    from core.explain import best_map

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(best_map, "SAMPLE", 8)
        mp.setattr(best_map, "FRACTIONS", (0.3, 0.7))
        mp.setattr(best_map, "METHODS", ("gradcam", "hirescam"))
        precompute.run_step(run, "faithful_maps")
    precompute.forget_model(run)
    return run
