"""GPUs (core.devices), the precisions offered on them, the GPU install path, and the queue's placement of jobs
on a simulated list of GPUs (real queue, real SQLite, real job processes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import devices
from core.access.roles import LOCAL_ADMIN
from core.config import RunConfig
from core.jobs.queue import JobQueue
from core.store.runs import RunStore
from core.training import precision

ROOT = Path(__file__).resolve().parent.parent
SMI = """0, NVIDIA H200, GPU-0a1b2c3d-0000-1111-2222-333344445555, 143771, 9.0
1, Tesla V100-SXM2-16GB, GPU-9f8e7d6c-0000-1111-2222-333344445555, 16384, 7.0
"""


@pytest.fixture
def fake_gpus(monkeypatch):
    def use(n: int | None, visible: str | None = None) -> None:
        for name, value in ((devices.FAKE_GPUS_ENV, n), ("CUDA_VISIBLE_DEVICES", visible)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, str(value))
    return use


def test_nvidia_smi_output_is_read_with_capabilities_and_narrowed_like_cuda():
    h200, v100 = devices.parse_nvidia_smi(SMI)
    assert (h200.index, h200.name, h200.memory_mib, h200.capability) == (0, "NVIDIA H200", 143771, (9, 0))
    assert v100.capability == (7, 0) and v100.uuid.startswith("GPU-9f8e")
    old_driver = devices.parse_nvidia_smi("0, Tesla K80, GPU-1234, 11441\n", devices.QUERY[:-1])
    assert old_driver[0].capability is None and old_driver[0].name == "Tesla K80"
    both = [h200, v100]
    assert devices.narrow(both, None) == both
    assert devices.narrow(both, "1") == [v100]
    assert devices.narrow(both, "1,0") == [v100, h200]  # in the order named: CUDA renumbers them so
    assert devices.narrow(both, "GPU-9f8e") == [v100]  # a UUID prefix, as CUDA takes it
    assert devices.narrow(both, "") == [] and devices.narrow(both, "-1") == []
    assert devices.narrow(both, "0,7,1") == [h200]  # CUDA stops at the first entry that names no GPU
    assert devices.min_capability(both) == (7, 0) and devices.min_capability([old_driver[0]]) is None


def test_simulated_gpus_come_from_the_environment_and_a_bad_value_says_what_it_takes(fake_gpus):
    fake_gpus(4)
    found = devices.gpus()
    assert [g.index for g in found] == [0, 1, 2, 3] and all(g.simulated for g in found)
    assert devices.placement_gpus() == found  # simulated ones are placed on even with the CPU build
    assert "4 simulated GPUs" in devices.describe_gpus()
    fake_gpus(4, "2")  # what a job pinned to GPU 2 sees
    assert [g.index for g in devices.gpus()] == [2]
    fake_gpus("four")
    with pytest.raises(devices.DeviceError, match="CELLSCOPE_FAKE_GPUS='four': give a number"):
        devices.gpus()


def test_a_job_environment_pins_one_gpu_with_memory_growth(fake_gpus, monkeypatch):
    fake_gpus(4)
    by_uuid = devices.Gpu(3, "A100", uuid="GPU-abc")
    assert devices.job_environment(by_uuid) == {"CUDA_VISIBLE_DEVICES": "GPU-abc", "TF_FORCE_GPU_ALLOW_GROWTH": "true",
                                                "CELLSCOPE_JOB_GPUS": "*"}
    by_index = devices.job_environment(devices.Gpu(2, "simulated GPU 2", simulated=True))
    assert by_index == {"CUDA_VISIBLE_DEVICES": "2", "TF_FORCE_GPU_ALLOW_GROWTH": "true", "CELLSCOPE_JOB_GPUS": "*",
                        "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # nvidia-smi's numbering is the PCI bus order
    assert devices.job_environment(None) == {}
    for name, value in by_index.items():  # inside that job's process: it sees its GPU, and places among all
        monkeypatch.setenv(name, value)
    assert [g.index for g in devices.gpus()] == [2]
    assert [g.index for g in devices.placement_gpus()] == [0, 1, 2, 3]
    fake_gpus(4, "1,3")  # a server started with CUDA_VISIBLE_DEVICES=1,3 passes that list on
    monkeypatch.delenv("CELLSCOPE_JOB_GPUS")
    assert devices.job_environment(devices.gpus()[0])["CELLSCOPE_JOB_GPUS"] == "1,3"


def test_gpu_precisions_are_offered_and_auto_follows_the_compute_capability(fake_gpus):
    assert precision.choices(gpu=True, flags=set()) == ("auto", "float32", "mixed_bfloat16", "mixed_float16")
    assert precision.choices(gpu=False, flags={"avx2"}) == ("auto", "float32")
    assert precision.resolve("auto", "resnet50", gpu=True, capability=(9, 0)) == "mixed_bfloat16"
    assert precision.resolve("auto", "resnet50", gpu=True, capability=(7, 5)) == "mixed_float16"  # T4
    assert precision.resolve("auto", "resnet50", gpu=True, capability=None) == "mixed_bfloat16"
    assert "auto runs mixed_float16." in precision.describe_support(gpu=True, flags=set(), capability=(7, 0))
    fake_gpus(2)
    assert "mixed_float16" in precision.supported() and precision.gpu_present()
    fake_gpus(0)
    assert not precision.gpu_present()


def test_the_cpu_and_gpu_requirements_pin_the_same_tensorflow_range():
    def ranges(name: str) -> set[str]:
        text = (ROOT / name).read_text()
        return set(re.findall(r"^tensorflow[\w\[\]-]*\s*([<>=!,.\d\s]+?)\s*(?:;|$)", text, re.M))
    assert len(ranges("requirements-cpu.txt")) == 1
    assert ranges("requirements-cpu.txt") == ranges("requirements-gpu.txt")
    assert "tensorflow[and-cuda]" in (ROOT / "requirements-gpu.txt").read_text()
    assert not re.search(r"^tensorflow", (ROOT / "requirements.txt").read_text(), re.M)  # never both in one venv


def make_dry_run(venv: Path, *args: str) -> str:
    done = subprocess.run(["make", "-n", "setup", f"VENV={venv}", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return done.stdout


def test_make_setup_gpu_installs_the_cuda_build_and_switching_rebuilds_the_venv(tmp_path):
    venv = tmp_path / "venv"
    fresh = make_dry_run(venv, "GPU=1")
    assert "-r requirements.txt -r requirements-gpu.txt" in fresh and "requirements-cpu.txt" not in fresh
    assert f"echo gpu > {venv}/.installed" in fresh and "rm -rf" not in fresh
    assert "-r requirements-cpu.txt" in make_dry_run(venv)  # a new venv without GPU=: the CPU build
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / ".installed").write_text("gpu\n")
    assert "pip install" not in make_dry_run(venv)  # GPU= not given: the installed build is kept, nothing to do
    assert "pip install" not in make_dry_run(venv, "GPU=1")
    switch = make_dry_run(venv, "GPU=0")
    assert f"rm -rf {venv}" in switch and "-r requirements-cpu.txt" in switch
    (venv / ".installed").write_text("")  # a stamp from before the GPU path: the CPU build
    assert f"rm -rf {venv}" in make_dry_run(venv, "GPU=1") and "pip install" not in make_dry_run(venv)


def test_the_environment_check_refuses_the_wrong_tensorflow_build():
    here = devices.tensorflow_build()[0]
    other = "gpu" if here == "CPU" else "cpu"
    done = subprocess.run([sys.executable, "scripts/check_env.py", "--build", other], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode != 0 and "environment check failed" in done.stderr


# -- placement: the real queue over a simulated list of GPUs ---------------------------------------------
def tiny(npz: Path, seed: int) -> RunConfig:
    return RunConfig(data=str(npz), size=28, arch="resnet18", weights="none", epochs=1, batch_size=32,
                     limit_train=64, seed=seed)


def test_with_four_gpus_four_jobs_run_each_on_its_own_gpu_and_a_freed_gpu_is_reused(tmp_path, tiny_npz, fake_gpus):
    fake_gpus(4)
    queue = JobQueue(RunStore(tmp_path / "runs"))
    assert queue.max_concurrent == 4  # one job per GPU unless the admin says fewer
    ids = queue.submit_many([tiny(tiny_npz, s) for s in range(6)], LOCAL_ADMIN)
    claimed = [queue._claim_next() for _ in range(6)]  # claims only: no process is started here
    assert claimed == [*ids[:4], None, None]
    assert sorted(queue.get(i).gpu for i in ids[:4]) == [0, 1, 2, 3]
    queue._finish(ids[1], "running", "failed", error="test")  # GPU of job 2 freed
    assert queue._claim_next() == ids[4] and queue.get(ids[4]).gpu == queue.get(ids[1]).gpu
    assert queue._claim_next() is None
    queue.set_max_concurrent(2, LOCAL_ADMIN)
    for i in (ids[0], ids[2]):
        queue._finish(i, "running", "failed", error="test")
    assert queue._claim_next() is None, "the admin's limit still counts: two run (GPUs 3 and the reused one)"
    fake_gpus(0)
    assert JobQueue(RunStore(tmp_path / "cpu" / "runs")).max_concurrent == 1  # CPU-only: unchanged


def test_each_job_process_gets_its_gpu_in_cuda_visible_devices(tmp_path, tiny_npz, fake_gpus):
    """Real job processes on 2 simulated GPUs: each one's log says the GPU it was given; a third job waits for a
    free GPU and gets the one a cancelled job gave back."""
    fake_gpus(2)
    queue = JobQueue(RunStore(tmp_path / "runs"))
    ids = queue.submit_many([tiny(tiny_npz, s) for s in range(3)], LOCAL_ADMIN)
    assert queue.tick() == ids[:2]

    def device_line(job_id: int) -> str:
        deadline = time.time() + 120
        while time.time() < deadline:
            path = queue.log_path(job_id)
            text = path.read_text() if path.is_file() else ""
            if "device:" in text:
                return text
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} never logged its device: {queue.log_tail(job_id)}")

    gpus = {i: queue.get(i).gpu for i in ids[:2]}
    assert sorted(gpus.values()) == [0, 1]
    for job_id, gpu in gpus.items():
        assert f"device: CUDA_VISIBLE_DEVICES={gpu}\n" in device_line(job_id)
    assert queue.get(ids[2]).status == "queued"
    queue.cancel(ids[0], LOCAL_ADMIN)
    deadline = time.time() + 60
    while queue.get(ids[0]).status == "running" and time.time() < deadline:
        queue.tick()
        time.sleep(0.2)
    assert queue.get(ids[0]).status == "cancelled"
    queue.tick()
    third = queue.get(ids[2])
    assert third.status == "running" and third.gpu == gpus[ids[0]]
    assert f"device: CUDA_VISIBLE_DEVICES={third.gpu}\n" in device_line(ids[2])
    for job_id in ids[1:]:
        queue.cancel(job_id, LOCAL_ADMIN)
    deadline = time.time() + 60
    while any(queue.get(i).status == "running" for i in ids) and time.time() < deadline:
        queue.tick()
        time.sleep(0.2)
    assert all(queue.get(i).status == "cancelled" for i in ids), [queue.get(i).status for i in ids]
    assert os.environ.get("CUDA_VISIBLE_DEVICES") is None  # the test process itself was never pinned


def test_the_train_page_shows_the_gpus_offers_mixed_float16_and_each_job_card_its_gpu(monkeypatch, tmp_path,
                                                                                     tiny_npz, fake_gpus):
    from page_helpers import APP, ok, texts
    from streamlit.testing.v1 import AppTest

    fake_gpus(2)
    (tmp_path / "no-data").mkdir()
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("CELLSCOPE_DATA_DIR", str(tmp_path / "no-data"))
    queue = JobQueue(RunStore(tmp_path / "artifacts" / "runs"))
    job_id = queue.submit(tiny(tiny_npz, 1), LOCAL_ADMIN)
    queue._claim_next()  # running on a GPU, without a process (the card is what is tested)
    at = ok(AppTest.from_file(APP, default_timeout=120).run())
    ok(at.switch_page("pages/train.py").run())
    assert "2 simulated GPUs (CELLSCOPE_FAKE_GPUS): jobs are placed one per GPU" in texts(at)
    assert at.selectbox(key="f_precision").options == ["auto (fastest here)", "float32", "mixed bfloat16",
                                                       "mixed float16"]
    at.session_state["tab"] = "Jobs"
    at.query_params["tab"] = "Jobs"
    ok(at.run())
    gpu = queue.get(job_id).gpu
    assert f":green-badge[:material/memory: GPU {gpu}]" in "\n".join(m.value for m in at.markdown)
    queue._finish(job_id, "running", "failed", error="test")  # nothing was started: no process to stop


def test_info_prints_the_build_the_gpus_and_the_precisions(fake_gpus, capsys):
    import json

    from core.cli import main

    fake_gpus(4)
    assert main(["info", "--no-tensorflow", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tensorflow"]["build"] == devices.tensorflow_build()[0] in ("CPU", "CUDA")
    assert [g["index"] for g in info["gpus"]] == [0, 1, 2, 3] and all(g["simulated"] for g in info["gpus"])
    assert info["precisions"] == ["float32", "mixed_bfloat16", "mixed_float16"]
    fake_gpus(0)  # none, even on a machine that has some
    assert main(["info", "--no-tensorflow"]) == 0
    out = capsys.readouterr().out
    assert f"({devices.tensorflow_build()[0]} build)" in out and "GPUs listed: 0" in out
    assert "Jobs train on the CPU" in out and "supports: float32" in out
