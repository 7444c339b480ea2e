"""The Train page, run headless with Streamlit's AppTest: data panel, settings form, sweeps, presets and the
live jobs view (one test launches a real job process that trains a tiny model)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from conftest import mirror_run
from page_helpers import APP, ok, texts
from streamlit.testing.v1 import AppTest

import core.data.download
from core.access.roles import LOCAL_ADMIN, User
from core.access.users import UserFile
from core.config import SETTINGS, RunConfig
from core.data import registry
from core.data.dataset import class_counts
from core.jobs.presets import PRESETS_BY_KEY
from core.jobs.queue import JobQueue
from core.store.runs import RunStore, open_run
from ui.session import USER_KEY

TIMEOUT = 120  # seconds per script run; the machine may be busy training
# Where each RunConfig field is set on the page: data and size in the data panel, the rest in the form.
WIDGET_KEYS = {f: f"f_{f}" for f in RunConfig.field_names()} | {"data": "data_path", "size": "data_source"}


def widgets(at: AppTest) -> dict[str, object]:
    out = {}
    for kind in ("text_input", "number_input", "selectbox", "toggle", "radio", "multiselect", "checkbox"):
        for w in getattr(at, kind):
            if w.key:
                out[w.key] = w
    return out


@pytest.fixture
def artifacts(monkeypatch, tmp_path) -> Path:
    """An empty run store and an empty BloodMNIST data folder."""
    artifacts = tmp_path / "artifacts"
    empty_data = tmp_path / "no-data"
    empty_data.mkdir()
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("CELLSCOPE_DATA_DIR", str(empty_data))
    return artifacts


def queue_at(artifacts: Path) -> JobQueue:
    return JobQueue(RunStore(artifacts / "runs"))


def show_tab(at: AppTest, name: str) -> AppTest:
    """Click a tab: its label goes to the session state and, except for the first tab, to the URL (?tab=)."""
    at.session_state["tab"] = name
    if name == "New training":
        at.query_params.pop("tab", None)
    else:
        at.query_params["tab"] = name
    return ok(at.run())


def open_train(jobs_tab: bool = False) -> AppTest:
    at = ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    ok(at.switch_page("pages/train.py").run())
    return show_tab(at, "Jobs") if jobs_tab else at


def use_file(at: AppTest, npz: Path) -> AppTest:
    ok(at.radio(key="data_source").set_value("custom").run())
    return ok(at.text_input(key="data_path").input(str(npz)).run())


def errors_next_to(at: AppTest, key: str) -> list[str]:
    """The error messages in the innermost column that holds the widget `key`."""
    columns = [c for c in at.columns if key in {w.key for kind in ("number_input", "text_input", "selectbox",
                                                                   "toggle") for w in getattr(c, kind)}]
    assert columns, f"no column holds {key}"
    return [e.value for e in columns[-1].error]


def test_renders_with_no_data_and_no_jobs(artifacts):
    at = open_train()
    shown = texts(at)
    assert at.title[0].value == "Train"
    assert [t.label for t in at.tabs] == ["New training", "Jobs"]
    assert not at.error
    # every size can be downloaded; the default (64 px) is not here, so launching would be blocked
    assert [b.label for b in at.button if b.key.startswith("download_")] == [f"Download {s} px" for s in
                                                                               (28, 64, 128, 224)]
    assert "BloodMNIST 64 px is not downloaded yet" in shown
    assert "**1 job** · about" in shown
    at = ok(open_train(jobs_tab=True))
    assert "No training jobs yet" in texts(at)


def test_every_setting_has_an_input_with_its_help_and_the_study_defaults(artifacts, tiny_npz):
    at = use_file(open_train(), tiny_npz)
    found = widgets(at)
    for name, key in WIDGET_KEYS.items():
        assert key in found, f"no input for {name}"
        assert found[key].help == SETTINGS[name].help, name
    defaults = RunConfig()
    for name in RunConfig.field_names():
        if name in ("data", "size", "weights", "tags"):
            continue
        assert found[f"f_{name}"].value == getattr(defaults, name), name
    assert found["f_weights"].value == "auto"  # ImageNet for ResNet-50, none for ResNet-18


def test_every_invalid_value_is_shown_next_to_its_field_at_once_and_goes_when_corrected(artifacts, tiny_npz):
    at = use_file(open_train(), tiny_npz)
    at.number_input(key="f_lr").set_value(0.0)
    ok(at.number_input(key="f_dropout").set_value(1.0).run())
    # no form to send: both errors are there after the change itself, each next to its field
    assert [m.replace("\\", "") for m in errors_next_to(at, "f_lr")] == ["must be in (0, 1]"]
    assert [m.replace("\\", "") for m in errors_next_to(at, "f_dropout")] == ["must be in [0, 1)"]
    assert "Fix the 2 settings marked in red" in texts(at)
    ok(at.button(key="launch").click().run())
    assert any("Nothing was launched" in e.value for e in at.error)
    assert queue_at(artifacts).list() == []
    # correcting one clears its message at once; the other stays until it is corrected too
    ok(at.number_input(key="f_lr").set_value(0.001).run())
    assert errors_next_to(at, "f_lr") == []
    assert errors_next_to(at, "f_dropout")
    ok(at.number_input(key="f_dropout").set_value(0.3).run())
    assert errors_next_to(at, "f_dropout") == [] and at.button(key="launch").label == "Launch 1 job"


def test_settings_survive_switching_tabs_and_pages(artifacts, tiny_npz):
    at = use_file(open_train(), tiny_npz)
    ok(at.number_input(key="f_epochs").set_value(3).run())
    ok(at.multiselect(key="sweep_fields").select("lr").run())
    ok(at.text_input(key="sweep_lr").input("0.001, 0.0001").run())
    show_tab(at, "Jobs")
    assert [w.key for w in at.number_input] == ["max_concurrent"]  # the settings are not drawn here
    ok(at.switch_page("pages/home.py").run())
    ok(at.switch_page("pages/train.py").run())
    show_tab(at, "New training")
    assert at.number_input(key="f_epochs").value == 3
    assert at.text_input(key="data_path").value == str(tiny_npz)
    assert at.text_input(key="sweep_lr").value == "0.001, 0.0001"
    assert at.button(key="launch").label == "Launch 2 jobs"
    # the path survives choosing BloodMNIST for a moment
    ok(at.radio(key="data_source").set_value(28).run())
    ok(at.radio(key="data_source").set_value("custom").run())
    assert at.text_input(key="data_path").value == str(tiny_npz)


def test_a_custom_npz_shows_its_class_counts(artifacts, tiny_npz):
    at = use_file(open_train(), tiny_npz)
    expected = class_counts(tiny_npz)
    n = {split: sum(expected[split]) for split in ("train", "val", "test")}
    assert f"28 px · {n['train']} train · {n['val']} val · {n['test']} test images" in texts(at)
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    assert [t["name"] for t in spec["data"]] == ["train", "val", "test"]
    assert [t["y"] for t in spec["data"]] == [expected[s] for s in ("train", "val", "test")]
    assert spec["data"][0]["x"][3] == registry.short_label(registry.label_names()[3])  # "immature granulocytes"
    assert spec["layout"]["barmode"] == "group"


def test_a_bad_file_gets_a_clear_message_next_to_it(artifacts, tmp_path):
    bad = tmp_path / "notes.npz"
    bad.write_text("not a dataset")
    at = use_file(open_train(), bad)
    assert any("notes.npz is not an .npz file" in e.value.replace("\\", "") for e in at.error)
    assert not at.get("plotly_chart")
    at.text_input(key="data_path").input(str(tmp_path / "missing.npz"))
    ok(at.run())
    assert any("No dataset file at" in e.value for e in at.error)


def test_a_sweep_previews_its_jobs_and_an_estimate(artifacts, tiny_npz):
    at = use_file(open_train(), tiny_npz)
    ok(at.multiselect(key="sweep_fields").select("batch_size").run())
    at.text_input(key="sweep_batch_size").input("16, 32")
    ok(at.number_input(key="sweep_repeats").set_value(2).run())
    shown = texts(at)
    assert re.search(r"\*\*4 jobs\*\* · about \*\*\d+ (s|min|h)\*\*", shown), shown
    assert "no finished runs on this machine yet" in shown  # says where the speed comes from
    table = at.dataframe[0].value
    assert list(table["batch_size"]) == [16, 16, 32, 32]
    assert list(table["seed"]) == [0, 1, 0, 1]
    assert at.button(key="launch").label == "Launch 4 jobs"
    assert queue_at(artifacts).list() == []  # a preview launches nothing
    # a bad sweep value is shown under its own input
    ok(at.text_input(key="sweep_batch_size").input("16, big").run())
    assert errors_next_to(at, "sweep_batch_size") == ["'big' is not a valid int"]


def test_auto_weights_follow_each_swept_network(artifacts, tiny_npz):
    at = use_file(open_train(), tiny_npz)
    ok(at.selectbox(key="f_arch").set_value("resnet18").run())  # "auto": from scratch for ResNet-18
    ok(at.multiselect(key="sweep_fields").select("arch").run())
    ok(at.text_input(key="sweep_arch").input("resnet18, mobilenetv3small").run())
    table = at.dataframe[0].value
    assert list(zip(table["arch"], table["weights"])) == [("resnet18", "none"), ("mobilenetv3small", "imagenet")]


def test_the_table_12_preset_previews_12_jobs_in_hours_or_days(artifacts):
    at = open_train()
    ok(at.selectbox(key="preset_choice").set_value("table12").run())
    ok(at.button(key="load_preset").click().run())
    shown = texts(at)
    assert re.search(r"\*\*12 jobs\*\* · about \*\*[\d.]+ (h|days)\*\*", shown), shown
    table = at.dataframe[0].value
    assert len(table) == 12
    assert set(table["arch"]) == {"resnet50", "resnet101"} and set(table["size"]) == {64, 128, 224}
    assert set(table["batch_size"]) == {16, 32}
    assert at.button(key="launch").label == "Launch 12 jobs"
    # no BloodMNIST here: launching is refused with the reason, nothing is queued
    ok(at.button(key="launch").click().run())
    assert any("not downloaded yet" in e.value for e in at.error)
    assert queue_at(artifacts).list() == []


def test_a_preset_of_variants_previews_each_variant(artifacts):
    at = open_train()
    at.selectbox(key="preset_choice").set_value("table3")
    ok(at.button(key="load_preset").click().run())
    table = at.dataframe[0].value
    assert list(table["optimizer"]) == ["adam", "rmsprop", "sgd"]
    assert at.button(key="launch").label == "Launch 3 jobs"
    assert at.toggle(key="f_attention").value and at.toggle(key="f_class_weights").value


@pytest.mark.parametrize("key", ["quick-28", "scratch-64", "robust"])
def test_a_recipe_card_shows_what_it_reached_with_its_seeds_and_loads_into_the_form(artifacts, key):
    preset = PRESETS_BY_KEY[key]
    figures = preset.figures
    at = open_train()
    ok(at.selectbox(key="preset_choice").set_value(key).run())
    metrics = {m.label.replace("\\", ""): (m.value, m.delta) for m in at.metric}  # labels are markdown-escaped
    if key == "robust":  # measured on another lab's cells and on the corruption benchmark too
        shared = figures.stat("external_shared_accuracy")
        assert metrics["external_dev, shared classes"] == (f"{shared.mean:.3f}", f"± {shared.sd:.3f}")
        assert metrics["Mean corrupted accuracy"][0] == f"{figures.stat('corrupted_accuracy').mean:.3f}"
    else:
        assert len(at.metric) == 4
    test = figures.stat("test_accuracy")
    assert metrics["Test accuracy"] == (f"{test.mean:.3f}", f"± {test.sd:.3f}")
    assert metrics["Monocyte F1"][0] == f"{figures.stat('monocyte_f1').mean:.3f}"
    assert metrics["Immature gran. F1"][0] == f"{figures.stat('ig_f1').mean:.3f}"
    assert metrics["Whole command"][0] == f"{figures.stat('command_seconds').mean / 60:.1f} min"
    shown = texts(at)
    assert f"mean ± sd of seeds {figures.seed_list}" in shown and figures.command in shown
    ok(at.button(key="load_preset").click().run())
    form = widgets(at)
    for name, value in preset.base.items():
        shown_as = "auto" if name == "weights" and value == RunConfig.default_weights(preset.base["arch"]) else value
        assert form[WIDGET_KEYS[name]].value == shown_as, name
    assert at.button(key="launch").label == "Launch 1 job"


def test_a_recipe_measured_on_another_lab_shows_it_beside_the_rest(artifacts, monkeypatch):
    """Figures with an external set (cell framing) and the corruption benchmark show as a second row, and the
    caption says the model was applied unchanged; the real recipes' cards have no such row."""
    from dataclasses import replace

    from core.jobs import preset_figures
    plain = PRESETS_BY_KEY["scratch-64"].figures
    seeds = tuple(replace(s, external_accuracy=0.6, external_shared_accuracy=0.7 + s.seed / 100,
                          clean_accuracy=0.97, corrupted_accuracy=0.9) for s in plain.seeds)
    measured = replace(plain, seeds=seeds, external="external_dev")
    monkeypatch.setattr(preset_figures, "load", lambda path=None: {"scratch-64": measured})
    at = open_train()
    ok(at.selectbox(key="preset_choice").set_value("scratch-64").run())
    metrics = {m.label.replace("\\", ""): (m.value, m.delta) for m in at.metric}  # labels are markdown-escaped
    shared = measured.stat("external_shared_accuracy")
    assert metrics["external_dev, shared classes"] == (f"{shared.mean:.3f}", f"± {shared.sd:.3f}")
    assert metrics["external_dev, all 8 classes"][0] == "0.600"
    assert metrics["Mean corrupted accuracy"][0] == "0.900" and metrics["Clean (corruption benchmark)"][0] == "0.970"
    assert "applied unchanged, with cell-centred framing" in texts(at)

    monkeypatch.undo()
    ok(at.selectbox(key="preset_choice").set_value("scratch-64").run())
    assert len(at.metric) == 4 and "applied unchanged" not in texts(at)


def test_a_study_preset_card_has_no_measured_figures(artifacts):
    at = open_train()
    ok(at.selectbox(key="preset_choice").set_value("table9").run())
    assert not at.metric and "Not measured" not in texts(at)


def test_download_offline_says_where_to_put_the_file(artifacts, monkeypatch):
    # the real download code, pointed at an address where nothing listens
    _, md5 = registry.url_and_md5(64)
    monkeypatch.setattr(registry, "url_and_md5", lambda size: ("http://127.0.0.1:9/bloodmnist_64.npz", md5))
    at = open_train()
    ok(at.button(key="download_64").click().run())
    message = at.error[0].value.replace("\\", "")
    assert "Could not download BloodMNIST 64 px" in message
    assert str(registry.local_path(64)) in message and "127.0.0.1:9" in message
    assert not registry.local_path(64).with_name("bloodmnist_64.npz.part").exists()


def test_download_shows_progress_and_selects_the_new_file(artifacts, monkeypatch, tiny_npz):
    calls = []

    def fake(size, root=None, progress=None, **kwargs):
        target = registry.local_path(size)
        total = tiny_npz.stat().st_size
        for done in (total // 2, total):
            progress(done, total)
            calls.append(done)
        shutil.copy(tiny_npz, target)
        return target

    monkeypatch.setattr(core.data.download, "download", fake)
    at = open_train()
    ok(at.button(key="download_28").click().run())
    assert len(calls) == 2
    assert at.radio(key="data_source").value == 28
    assert "download_28" not in {b.key for b in at.button}
    assert len(at.get("plotly_chart")) == 1  # the class counts of the new file


def test_job_controls(artifacts, monkeypatch, tiny_npz):
    """Cancel, resume, delete and the status filter, with the queue's scheduler switched off."""
    monkeypatch.setattr(JobQueue, "tick", lambda self: [])
    queue = queue_at(artifacts)
    config = RunConfig(data=str(tiny_npz), size=28, arch="resnet18", weights="none", epochs=2)
    waiting, broken = queue.submit(config, LOCAL_ADMIN), queue.submit(config.replace(seed=1), LOCAL_ADMIN, sweep="demo")
    assert queue._transition(broken, "queued", "failed", error="the training process ended without reporting",
                  run_id="20250101-000000-abcdef", epoch=1, finished=time.time())
    at = open_train(jobs_tab=True)
    shown = texts(at)
    assert "Job 1" in shown and "Job 2" in shown and "1 queued · 1 failed · updated" in shown
    assert any("ended without reporting" in e.value for e in at.error)
    assert at.progress[0].text.startswith("Queued")
    assert {b.key for b in at.button} >= {"ask_cancel_1", "resume_2", "delete_2"}
    # cancel asks first; "Keep it" changes nothing
    ok(at.button(key="ask_cancel_1").click().run())
    assert "Cancel job 1?" in texts(at) and "nothing is lost" in texts(at)
    ok(at.button(key="keep_1").click().run())
    assert queue.get(waiting).status == "queued" and not [b for b in at.button if b.key == "cancel_1"]
    ok(at.button(key="ask_cancel_1").click().run())
    ok(at.button(key="cancel_1").click().run())
    assert queue.get(waiting).status == "cancelled"
    assert "Cancel job 1?" not in texts(at)
    ok(at.button(key="resume_2").click().run())
    assert queue.get(broken).status == "queued"
    ok(at.segmented_control(key="job_filter").set_value("Active").run())
    assert "Job 2" in texts(at) and "Job 1" not in texts(at)
    ok(at.segmented_control(key="job_filter").set_value("All").run())
    ok(at.button(key="delete_1").click().run())
    assert [j.id for j in queue.list()] == [broken]
    ok(at.number_input(key="max_concurrent").set_value(2).run())
    assert queue.max_concurrent == 2


def test_a_user_cannot_act_on_another_users_job_from_the_page(artifacts, monkeypatch, tiny_npz):
    """With login on, the page acts as the logged-in user: another trainer's job shows its owner and no
    Cancel (the queue refuses it anyway: test_faults_jobs); its owner gets the button; the limit is the
    admin's."""
    monkeypatch.setattr(JobQueue, "tick", lambda self: [])
    settings = artifacts.parent / "cellscope.toml"
    settings.write_text('[access]\nlogin = "password"\nusers_file = "users.toml"\n')
    users = UserFile(artifacts.parent / "users.toml", PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    for name in ("alice", "bob"):
        users.add(name, ["trainer"], f"{name} password")
    monkeypatch.setenv("CELLSCOPE_SETTINGS", str(settings))
    queue = queue_at(artifacts)
    job_id = queue.submit(RunConfig(data=str(tiny_npz), size=28, arch="resnet18", weights="none", epochs=1),
                          User("alice", ("trainer",)))

    def jobs_tab_as(user: User) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.session_state[USER_KEY] = user
        ok(at.run())
        ok(at.switch_page("pages/train.py").run())
        show_tab(at, "Jobs")
        return at

    at = jobs_tab_as(User("bob", ("trainer",)))
    assert not [b for b in at.button if "cancel" in b.key]
    assert "alice" in str([m.value for m in at.markdown])
    assert at.number_input(key="max_concurrent").disabled  # the admin's; the queue refuses it too
    # "Only my jobs": bob has none
    ok(at.toggle(key="my_jobs").set_value(True).run())
    assert "You have no training jobs yet" in texts(at) and "Job 1" not in texts(at)
    at = jobs_tab_as(User("alice", ("trainer",)))
    ok(at.button(key=f"ask_cancel_{job_id}").click().run())
    ok(at.button(key=f"cancel_{job_id}").click().run())
    assert queue.get(job_id).status == "cancelled"


def test_launch_queues_exactly_the_run_shown(artifacts, monkeypatch, tiny_npz):
    """Launch queues the values the inputs hold (a real job trains in tests/test_browser_train.py)."""
    monkeypatch.setattr(JobQueue, "tick", lambda self: [])
    at = use_file(open_train(), tiny_npz)
    at.selectbox(key="f_arch").set_value("resnet18")
    at.selectbox(key="f_weights").set_value("none")
    at.number_input(key="f_epochs").set_value(1)
    at.number_input(key="f_limit_train").set_value(64)
    at.number_input(key="f_batch_size").set_value(32)
    ok(at.button(key="launch").click().run())
    assert not at.error, [e.value for e in at.error]
    assert "Queued 1 job" in at.success[0].value
    jobs = queue_at(artifacts).list()
    assert len(jobs) == 1
    job = jobs[0]
    assert (job.config.arch, job.config.weights, job.config.epochs, job.config.limit_train,
            job.config.batch_size, job.config.size) == ("resnet18", "none", 1, 64, 32, 28)
    assert Path(job.config.data) == tiny_npz.resolve()
    assert at.progress[0].text.startswith("Queued")  # the page is on the Jobs tab


def test_job_cards_show_the_phase_the_score_tags_links_and_command(artifacts, monkeypatch, trained_run):
    monkeypatch.setattr(JobQueue, "tick", lambda self: [])
    run = mirror_run(trained_run, artifacts)
    queue = queue_at(artifacts)
    config = open_run(run).config
    done = queue.submit(config, LOCAL_ADMIN)
    now = time.time()
    assert queue._transition(done, "queued", "succeeded", run_id=run.name, run_path=str(run), started=now - 300,
                             finished=now - 120, phase="done")
    running = queue.submit(config.replace(seed=5, tags=("week 3",)), LOCAL_ADMIN)
    assert queue._claim_next() == running
    assert queue.get(running).phase == "loading"  # a (re)claimed job starts from loading
    queue._update(running, phase="validating", detail="epoch 2/2", fraction=0.8, eta_seconds=65.0, epoch=2,
                  epochs=2, batch=8, batches=8)
    at = open_train(jobs_tab=True)
    shown = texts(at)
    # the running job: its phase, detail and time left
    assert [p.text for p in at.progress] == ["Validating · epoch 2/2 · about 1 min left"]
    assert ":blue-badge[:material/sell: week 3]" in shown
    # the finished one: its score, tags, when, and one click to its run on Results and Confusions
    metrics = open_run(run).metrics
    assert (f"Validation accuracy **{metrics['val']['accuracy']:.3f}** · test accuracy "
            f"**{metrics['test']['accuracy']:.3f}** · best epoch 1 of 1") in shown
    assert ":blue-badge[:material/sell: fixture]" in shown
    assert "succeeded 2 min ago after 3 min" in shown
    links = {e.proto.label: (e.proto.page, e.proto.query_string) for e in at.get("page_link")}
    assert links["Open on Results"] == ("results", f"run={run.name}"), links
    assert links["Confusions"][0].startswith("confusion") and links["Confusions"][1] == f"run={run.name}", links
    commands = [c.value for c in at.code if c.value.startswith("python -m core submit")]
    assert any("--tag fixture" in c and "--arch resnet18" in c for c in commands), commands
    # a cancel shows at once
    queue._update(running, cancel_requested_at=time.time())
    ok(at.run())
    assert at.progress[0].text.startswith("Cancelling…")


def test_data_and_weights_files_outside_the_data_roots_are_refused(artifacts, tiny_npz):
    at = use_file(open_train(), Path("/etc/passwd"))
    assert any("data file /etc/passwd is outside the folders this server may read" in e.value for e in at.error)
    assert not at.get("plotly_chart")
    at = use_file(at, tiny_npz)
    at.selectbox(key="f_weights").set_value("file")  # in the form: sent with the launch
    at.text_input(key="f_weights_file").input("/etc/shadow")
    ok(at.button(key="launch").click().run())
    next_to = [m.replace("\\", "") for m in errors_next_to(at, "f_weights_file")]
    assert any("weights file /etc/shadow is outside" in m for m in next_to), next_to
    assert any("Nothing was launched" in e.value for e in at.error)
    assert queue_at(artifacts).list() == []
