"""The training settings of issue 10, each shown to take effect on tiny real data: the learning-rate schedule's
rate at given steps, optimizer / weight decay / label smoothing reaching the compiled model, weight averaging
(the averaged weights are evaluated, kept across a resume and stored), test-time augmentation (the mean over
the 8 flips and turns, stored beside the plain figures), the precision policy (applied for the run, restored
after it, also after an error; refused where this machine lacks it), and configs saved before the settings.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
from page_helpers import APP, ok, texts
from streamlit.testing.v1 import AppTest

from core.cli import main as cli_main
from core.config import ConfigError, RunConfig
from core.data.dataset import load_for_config, load_npz
from core.evaluation.metrics import evaluate
from core.inference import tta
from core.models import batchnorm
from core.models.build import build_model
from core.store import checkpoints
from core.store.runs import RunStore, open_run
from core.training import pipeline, precision
from core.training.schedules import ONECYCLE_FINAL_DIV, ONECYCLE_START_DIV, StepSchedule, learning_rate
from core.training.trainer import (
    Trainer,
    TrainingCancelled,
    compile_model,
    predict_probabilities,
    train,
)


def small_config(tiny_npz, **changes) -> RunConfig:
    base = dict(data=str(tiny_npz), size=28, arch="resnet18", weights="none", epochs=2, batch_size=32, seed=0,
                limit_train=64)  # 2 steps an epoch
    base.update(changes)
    return RunConfig(**base)


def rate(schedule, step: int) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step)))


# -- learning-rate schedules -----------------------------------------------------------------------------
def test_constant_schedule_is_the_plain_rate():
    assert learning_rate(RunConfig(lr=3e-4), steps_per_epoch=10) == 3e-4


def test_cosine_warms_up_linearly_then_decays_to_zero():
    config = RunConfig(lr=0.1, lr_schedule="cosine", warmup_epochs=2, epochs=10)
    schedule = learning_rate(config, steps_per_epoch=5)  # 50 steps, the first 10 warming up
    assert isinstance(schedule, StepSchedule)
    assert (schedule.total_steps, schedule.warmup_steps) == (50, 10)
    assert rate(schedule, 0) == pytest.approx(0.01)  # (0 + 1) / 10 of the rate
    assert rate(schedule, 4) == pytest.approx(0.05)
    assert rate(schedule, 9) == pytest.approx(0.1)  # peak at the end of the warm-up
    assert rate(schedule, 10) == pytest.approx(0.1)  # the cosine starts at the peak
    assert rate(schedule, 30) == pytest.approx(0.05)  # half way down
    assert rate(schedule, 50) == pytest.approx(0.0, abs=1e-9)
    after = [rate(schedule, s) for s in range(10, 50)]
    assert all(b < a for a, b in zip(after, after[1:]))
    assert rate(schedule, 49) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 39 / 40)), rel=1e-3)


def test_cosine_without_warmup_starts_at_the_rate():
    schedule = learning_rate(RunConfig(lr=0.01, lr_schedule="cosine", epochs=4), steps_per_epoch=25)
    assert rate(schedule, 0) == pytest.approx(0.01)
    assert rate(schedule, 50) == pytest.approx(0.005)


def test_onecycle_rises_over_30_percent_then_falls_to_its_floor():
    schedule = learning_rate(RunConfig(lr=0.1, lr_schedule="onecycle", epochs=10, warmup_epochs=3),
                             steps_per_epoch=10)  # 100 steps; warm-up epochs are the cosine's only
    start = 0.1 / ONECYCLE_START_DIV
    assert schedule.warmup_steps == 0
    assert rate(schedule, 0) == pytest.approx(start)
    assert rate(schedule, 15) == pytest.approx((start + 0.1) / 2)  # half way up, along a cosine
    assert rate(schedule, 30) == pytest.approx(0.1)
    assert rate(schedule, 99) == pytest.approx(start / ONECYCLE_FINAL_DIV)
    rates = [rate(schedule, s) for s in range(100)]
    assert int(np.argmax(rates)) == 30
    assert all(b > a for a, b in zip(rates[:30], rates[1:31]))
    assert all(b < a for a, b in zip(rates[30:99], rates[31:100]))


def test_a_schedule_survives_saving():
    schedule = StepSchedule("onecycle", 0.02, 40)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(again, StepSchedule) and again.get_config() == schedule.get_config()


# -- the compiled model --------------------------------------------------------------------------------
def tiny_model() -> keras.Model:
    inputs = keras.Input((28, 28, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(8, activation="softmax", name="probabilities")(x))


def test_optimizer_weight_decay_schedule_ema_and_smoothing_reach_the_compiled_model():
    config = RunConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05, label_smoothing=0.1, ema=True,
                       ema_decay=0.99, lr_schedule="cosine", warmup_epochs=1, epochs=3)
    model = tiny_model()
    compile_model(model, config, 8, steps_per_epoch=4)
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.AdamW)
    assert opt.weight_decay == pytest.approx(0.05)
    assert opt.use_ema and opt.ema_momentum == pytest.approx(0.99)
    assert isinstance(opt._learning_rate, StepSchedule) and opt._learning_rate.total_steps == 12
    assert float(opt.learning_rate) == pytest.approx(2e-3 / 4)  # step 0 of a 4-step warm-up
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    # the smoothed loss: a perfect one-hot prediction is no longer free
    y = np.eye(8, dtype="float32")[[0]]
    assert float(model.loss(y, np.clip(y, 1e-7, 1.0))) > 0.1

    sgd = RunConfig(optimizer="sgd", lr=0.05, momentum=0.8, weight_decay=5e-4)
    compile_model(model, sgd, 8)
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.SGD)
    assert (opt.weight_decay, opt.momentum) == (pytest.approx(5e-4), pytest.approx(0.8))
    assert not opt.use_ema and float(opt.learning_rate) == pytest.approx(0.05)


def test_weight_decay_shrinks_weights_without_gradients():
    """Decoupled: with a zero gradient, SGD with weight decay still moves each weight by -lr * wd * w."""
    config = RunConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.5)
    model = tiny_model()
    compile_model(model, config, 8)
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    model.optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in variables])
    for b, v in zip(before, variables):
        np.testing.assert_allclose(v.numpy(), b * (1 - 0.1 * 0.5), rtol=1e-6)


# -- configs: values refused, old configs -----------------------------------------------------------------
BAD = [
    ("lr_schedule", "step"), ("warmup_epochs", -1), ("warmup_epochs", 1.5), ("weight_decay", -0.1),
    ("weight_decay", 1.0), ("weight_decay", "0.1"), ("label_smoothing", 0.6), ("label_smoothing", -0.1),
    ("ema", 1), ("ema_decay", 1.0), ("ema_decay", 0.0), ("precision", "float16"), ("tta", "yes"),
]


@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_values_are_refused_naming_the_setting(name, value):
    with pytest.raises(ConfigError) as info:
        RunConfig(**{name: value})
    assert info.value.field == name


def test_adam_ignores_weight_decay_and_adamw_without_it_is_adam():
    model = tiny_model()
    compile_model(model, RunConfig(optimizer="adam", weight_decay=0.01), 8)  # like momentum: SGD's only
    assert type(model.optimizer) is keras.optimizers.Adam and model.optimizer.weight_decay is None
    compile_model(model, RunConfig(optimizer="adamw"), 8)
    assert isinstance(model.optimizer, keras.optimizers.AdamW) and model.optimizer.weight_decay == 0.0


def test_weight_averaging_re_estimates_batchnorm_statistics_by_default():
    """The running statistics follow the raw weights; the averaged weights need their own."""
    assert RunConfig(weights="imagenet", ema=True).recalibrate_bn is True
    assert RunConfig(weights="imagenet").recalibrate_bn is False
    assert RunConfig(weights="imagenet", ema=True, bn_recalibration="off").recalibrate_bn is False


def test_a_warmup_as_long_as_the_run_is_refused():
    with pytest.raises(ConfigError, match="fewer than the epochs") as info:
        RunConfig(lr_schedule="cosine", warmup_epochs=3, epochs=3)
    assert info.value.field == "warmup_epochs"
    assert RunConfig(lr_schedule="constant", warmup_epochs=3, epochs=3).warmup_epochs == 3  # unused there


OLD_CONFIG_JSON = """{
  "arch": "resnet18", "attention": false, "aug_hflip": true, "aug_rot90": false, "aug_shear": 0.2,
  "aug_vflip": false, "aug_zoom": 0.2, "batch_size": 32, "bn_recalibration": "auto",
  "bn_recalibration_batches": 50, "class_weights": false, "data": "", "deterministic": false, "dropout": 0.3,
  "epochs": 2, "limit_train": 64, "lr": 0.0001, "momentum": 0.9, "optimizer": "adam", "patience": 0, "seed": 0,
  "size": 28, "tags": [], "weights": "none"
}"""  # a config.json as runs wrote it before issue 10


def test_a_config_saved_before_the_settings_loads_and_compiles_as_before():
    config = RunConfig.from_dict(json.loads(OLD_CONFIG_JSON))
    assert (config.lr_schedule, config.weight_decay, config.label_smoothing, config.ema, config.precision,
            config.tta) == ("constant", 0.0, 0.0, False, "float32", False)
    model = tiny_model()
    compile_model(model, config, 8, steps_per_epoch=7)
    opt = model.optimizer
    assert type(opt) is keras.optimizers.Adam
    assert opt.weight_decay is None and not opt.use_ema
    assert opt.get_config()["learning_rate"] == pytest.approx(1e-4)  # a plain float, no schedule
    assert model.loss.get_config()["label_smoothing"] == 0.0


@pytest.mark.slow
def test_a_run_with_the_defaults_stores_what_it_stored_before(trained_run):
    """The shared fixture run (defaults for every setting of issue 10): no TTA figures, the plain figures only,
    its config.json naming the new settings at their defaults; precision "auto" ran in what this machine
    runs natively, recorded in its metrics, and its convolutions were stored in that policy."""
    run = open_run(trained_run)
    assert "tta" not in run.metrics and run.metrics["weights_averaged"] is False
    ran = precision.resolve("auto", run.config.arch)
    assert run.metrics["precision"] == ran
    stored = keras.models.load_model(run.model_path, compile=False)
    convs = [layer for layer in stored.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and {layer.dtype_policy.name for layer in convs} == {ran}
    assert stored.output.dtype == "float32"
    saved = json.loads((trained_run / "config.json").read_text())
    assert (saved["lr_schedule"], saved["ema"], saved["precision"], saved["tta"]) == ("constant", False, "auto",
                                                                                     False)


# -- test-time augmentation ------------------------------------------------------------------------------
def test_tta_is_the_mean_over_the_eight_flips_and_turns(tiny_npz):
    images = load_npz(tiny_npz).val.images[:6]
    keras.utils.set_random_seed(0)
    model = tiny_model()  # not symmetric: each transform gives different probabilities

    def predict(x):
        return model.predict(x.astype("float32") / 255.0, verbose=0)

    transforms = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    transforms += [np.flip(t, axis=2) for t in transforms]
    outputs = [predict(np.ascontiguousarray(t)) for t in transforms]
    assert len({o.tobytes() for o in outputs}) == 8
    np.testing.assert_allclose(tta.probabilities(predict, images), np.mean(outputs, axis=0), rtol=1e-5, atol=1e-7)
    assert not np.allclose(tta.probabilities(predict, images), outputs[0])
    assert len({tta.dihedral(images, i).tobytes() for i in range(tta.N_TRANSFORMS)}) == 8


# -- weight averaging, with a schedule, AdamW, label smoothing and TTA, through a cancel and a resume ------------
@pytest.fixture(scope="module")
def averaged_run(tiny_npz, tmp_path_factory):
    """EMA (decay 0.9) + cosine with 1 warm-up epoch + AdamW + label smoothing + TTA; 2 epochs of 2 steps,
    cancelled at the first batch of epoch 2 and resumed. Records, at each epoch's end, the raw weights and
    the weights kept as best (the evaluated ones) and the optimizer's averages."""
    store = RunStore(tmp_path_factory.mktemp("ema-artifacts") / "runs")
    config = small_config(tiny_npz, ema=True, ema_decay=0.9, lr=1e-3, lr_schedule="cosine", warmup_epochs=1,
                          optimizer="adamw", weight_decay=1e-4, label_smoothing=0.1, tta=True)
    seen: dict[int, dict] = {}
    trainers: list[Trainer] = []

    def on_epoch(row):
        t = trainers[-1]
        seen[int(row["epoch"])] = {
            "raw": [w.copy() for w in t.model.get_weights()],
            "raw_trainable": [v.numpy().copy() for v in t.model.trainable_weights],
            "best": [w.copy() for w in t.best_weights] if t.best_epoch == row["epoch"] else None,
            "averages": [v.numpy().copy() for v in t.model.optimizer.variables if v.name.endswith("_average")],
        }

    calls = []

    def cancel():
        calls.append(1)
        return len(calls) >= 3

    trainers.append(Trainer(config, store, on_epoch=on_epoch, should_cancel=cancel, echo=None))
    with pytest.raises(TrainingCancelled) as info:
        trainers[-1].run()
    work = info.value.work_dir
    checkpoint = keras.models.load_model(checkpoints.load(work).model_path)
    saved_averages = [v.numpy() for v in checkpoint.optimizer.variables if v.name.endswith("_average")]
    checkpoint_weights = checkpoint.get_weights()
    trainers.append(Trainer(RunConfig.from_dict(json.loads((work / "config.json").read_text())), store,
                            run_id=work.name, on_epoch=on_epoch, echo=None))
    run = trainers[-1].run()
    return config, run, seen, saved_averages, checkpoint_weights


@pytest.mark.slow
def test_the_checkpoint_keeps_the_averages_and_the_raw_weights(averaged_run):
    _, _, seen, saved_averages, checkpoint_weights = averaged_run
    epoch1 = seen[1]
    assert len(saved_averages) == len(epoch1["raw_trainable"]) > 0
    for saved, recorded in zip(saved_averages, epoch1["averages"]):
        np.testing.assert_array_equal(saved, recorded)
    for saved, raw in zip(checkpoint_weights, epoch1["raw"]):  # training goes on from the raw weights
        np.testing.assert_array_equal(saved, raw)


@pytest.mark.slow
def test_averaged_weights_differ_from_raw_and_are_the_stored_model(averaged_run):
    config, run, seen, _, _ = averaged_run
    assert run.metrics["weights_averaged"] is True and run.metrics["epochs_run"] == 2
    best = run.metrics["best_epoch"]
    stored = keras.models.load_model(run.model_path, compile=False)
    kept = seen[best]["best"]
    for s, k in zip(stored.get_weights(), kept):
        np.testing.assert_array_equal(s, k)
    stored_trainable = [v.numpy() for v in stored.trainable_weights]
    assert len(seen[best]["averages"]) == len(stored_trainable) > 0
    for s, average in zip(stored_trainable, seen[best]["averages"]):
        np.testing.assert_array_equal(s, average)
    differing = [not np.allclose(s, r) for s, r in zip(stored_trainable, seen[best]["raw_trainable"])]
    assert sum(differing) > len(differing) // 2

    # BatchNorm statistics were re-estimated on the averaged weights: re-estimating them again on the stored
    # model from the same batches gives the same statistics
    layers = batchnorm.batchnorm_layers(stored)
    stats = [(b.moving_mean.numpy().copy(), b.moving_variance.numpy().copy()) for b in layers]
    train_images = load_for_config(config.data, config.size, config.limit_train, config.seed).train.images
    batchnorm.recalibrate(stored, pipeline.bn_statistics_dataset(
        train_images, config.arch, config.batch_size, config.seed + best), config.bn_recalibration_batches)
    for (mean, var), layer in zip(stats, layers):
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_tta_figures_are_stored_beside_the_plain_ones(averaged_run):
    config, run, seen, _, _ = averaged_run
    m = run.metrics
    assert set(m["tta"]) == {"val", "test"}
    data = load_npz(config.data)
    stored = keras.models.load_model(run.model_path, compile=False)
    for split in ("val", "test"):
        s = data.split(split)
        plain = evaluate(s.labels, predict_probabilities(stored, s.images, config.arch), data.labels)
        augmented = evaluate(s.labels, tta.probabilities(
            lambda x: predict_probabilities(stored, x, config.arch), s.images), data.labels)
        assert set(m["tta"][split]) == set(m[split])
        assert m[split]["accuracy"] == pytest.approx(plain.accuracy)  # the plain figure, not replaced
        assert m["tta"][split]["accuracy"] == pytest.approx(augmented.accuracy)
        assert m["tta"][split]["loss"] == pytest.approx(augmented.loss, rel=1e-4)
        assert m["tta"][split]["loss"] != pytest.approx(m[split]["loss"], rel=1e-6)
    # the best epoch is chosen on the plain validation figures (history holds no TTA)
    history = run.history()
    assert all("tta" not in key for row in history for key in row)
    best = max(history, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert int(best["epoch"]) == m["best_epoch"]


@pytest.mark.slow
def test_evaluate_command_prints_tta_beside_the_plain_figures(averaged_run, capsys):
    _, run, _, _, _ = averaged_run
    assert cli_main(["evaluate", "--run", str(run.path), "--tta"]) == 0
    out = json.loads(capsys.readouterr().out)
    for split in ("val", "test"):
        assert out[split]["accuracy"] == pytest.approx(run.metrics[split]["accuracy"], abs=2 / out[split]["n"])
        assert out["tta"][split]["accuracy"] == pytest.approx(run.metrics["tta"][split]["accuracy"],
                                                              abs=2 / out[split]["n"])
    assert cli_main(["evaluate", "--run", str(run.path)]) == 0
    assert "tta" not in json.loads(capsys.readouterr().out)


# -- precision -------------------------------------------------------------------------------------------------
def test_supported_precisions_follow_the_hardware():
    assert precision.supported(gpu=False, flags={"avx2"}) == ("float32",)
    assert precision.supported(gpu=False, flags={"avx512_bf16"}) == ("float32", "mixed_bfloat16")
    assert precision.supported(gpu=False, flags={"amx_bf16"}) == ("float32", "mixed_bfloat16")
    assert precision.supported(gpu=True, flags=set()) == ("float32", "mixed_bfloat16", "mixed_float16")
    assert "supports: float32; auto runs float32." in precision.describe_support(gpu=False, flags={"avx2"})
    here = precision.supported()
    assert here[0] == "float32" and set(here) <= {"float32", "mixed_bfloat16", "mixed_float16"}
    assert ("mixed_bfloat16" in here) == bool({"avx512_bf16", "amx_bf16"} & precision.cpu_flags()) or \
        precision.gpu_present()


def test_an_unsupported_precision_is_refused_with_what_this_machine_runs():
    with pytest.raises(precision.PrecisionUnsupported, match="mixed_float16 needs a GPU; this machine supports "
                                                             "float32, mixed_bfloat16"):
        precision.check("mixed_float16", gpu=False, flags={"avx512_bf16"})
    with pytest.raises(precision.PrecisionUnsupported, match="AVX512_BF16 or AMX"):
        precision.check("mixed_bfloat16", gpu=False, flags=set())
    precision.check("float32", gpu=False, flags=set())
    precision.check("auto", gpu=False, flags=set())


def test_auto_is_bfloat16_where_it_runs_natively_else_float32():
    assert precision.resolve("auto", "compactresnet", gpu=False, flags={"avx2"}) == "float32"
    assert precision.resolve("auto", "compactresnet", gpu=False, flags={"avx512_bf16"}) == "mixed_bfloat16"
    assert precision.resolve("auto", "resnet50", gpu=False, flags={"amx_bf16"}) == "mixed_bfloat16"
    # measured slower in bfloat16 on this CPU: auto keeps float32 for it, except on a GPU
    assert precision.resolve("auto", "mobilenetv3small", gpu=False, flags={"avx512_bf16"}) == "float32"
    assert precision.resolve("auto", "mobilenetv3small", gpu=True, flags=set()) == "mixed_bfloat16"
    assert precision.resolve("float32", "resnet50", gpu=True, flags=set()) == "float32"  # a named one is kept
    assert "auto runs float32." in precision.describe_support(gpu=False, flags={"avx2"})
    assert "auto runs mixed_bfloat16 for ResNet-18, Compact ResNet, ResNet-50, ResNet-101 (faster in it here), " \
           "float32 for the others." in precision.describe_support(gpu=False, flags={"avx512_bf16"})
    assert RunConfig().precision == "auto" and RunConfig.from_dict({}).precision == "float32"  # old configs ran so


@pytest.mark.skipif(precision.gpu_present(), reason="this machine has a GPU: mixed_float16 is supported")
def test_the_trainer_refuses_mixed_float16_without_a_gpu(tiny_npz, runs_dir):
    store = RunStore(runs_dir)
    with pytest.raises(precision.PrecisionUnsupported, match="needs a GPU"):
        train(small_config(tiny_npz, precision="mixed_float16"), store, echo=None)
    assert store.list_runs() == [] and not list((runs_dir / ".incomplete").glob("*/checkpoint.json"))
    assert keras.mixed_precision.global_policy().name == "float32"


def test_the_policy_is_restored_after_an_error():
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError, match="inside"):
        with precision.policy("mixed_bfloat16"):
            assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
            raise RuntimeError("inside")
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
@pytest.mark.skipif("mixed_bfloat16" not in precision.supported(), reason="no bfloat16 support here")
def test_bfloat16_run_sets_the_policy_for_the_run_and_restores_it_after_an_error_and_a_resume(tiny_npz, runs_dir):
    store = RunStore(runs_dir)
    config = small_config(tiny_npz, precision="mixed_bfloat16", limit_train=32)  # 1 step an epoch
    policies = []

    def fail_after_epoch_one(row):
        policies.append(keras.mixed_precision.global_policy().name)
        raise RuntimeError("stop after epoch 1")

    with pytest.raises(RuntimeError, match="stop after epoch 1"):
        train(config, store, on_epoch=fail_after_epoch_one, echo=None)
    assert policies == ["mixed_bfloat16"]
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the error

    (work,) = (runs_dir / ".incomplete").iterdir()
    run = Trainer(config, store, run_id=work.name, on_epoch=lambda row: policies.append(
        keras.mixed_precision.global_policy().name), echo=None).run()
    assert policies == ["mixed_bfloat16", "mixed_bfloat16"]
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    stored = keras.models.load_model(run.model_path, compile=False)
    convs = [layer for layer in stored.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.dtype_policy.name == "mixed_bfloat16" for layer in convs)
    assert stored.get_layer("logits").dtype_policy.name == "float32"
    assert stored.get_layer("probabilities").dtype_policy.name == "float32"
    assert stored.output.dtype == "float32"
    assert 0.0 <= run.metrics["test"]["accuracy"] <= 1.0


def test_the_train_page_says_which_precisions_this_machine_supports(monkeypatch, tmp_path):
    (tmp_path / "no-data").mkdir()
    monkeypatch.setenv("CELLSCOPE_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("CELLSCOPE_DATA_DIR", str(tmp_path / "no-data"))
    at = ok(AppTest.from_file(APP, default_timeout=120).run())
    ok(at.switch_page("pages/train.py").run())
    assert at.selectbox(key="f_precision").value == "auto"
    shown = texts(at)
    assert precision.describe_support() in shown
    assert f"supports: {', '.join(precision.supported())}; auto runs " in shown


def test_float16_mixed_precision_scales_the_loss_and_still_averages_weights(tiny_npz):
    """What a GPU run with mixed_float16 does, here on 8 images: Keras wraps the optimizer in a loss-scale
    optimizer, the network's head stays float32, and the averaged weights are swapped in through the wrapper."""
    data = load_npz(tiny_npz)
    config = small_config(tiny_npz, ema=True, ema_decay=0.5, optimizer="sgd", lr=0.1, precision="mixed_float16")
    with precision.policy("mixed_float16"):
        network = build_model(config, data.n_classes, data.image_size)
        model = tiny_model()
        compile_model(model, config, data.n_classes)
    assert keras.mixed_precision.global_policy().name == "float32"
    convs = [layer for layer in network.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "float16" for layer in convs)
    assert network.get_layer("logits").compute_dtype == "float32" and network.output.dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x = data.train.images[:8].astype("float32") / 255.0
    y = np.eye(data.n_classes, dtype="float32")[data.train.labels[:8]]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    averages = [v.numpy() for v in model.optimizer.variables if v.name.endswith("_average")]
    assert len(averages) == len(model.trainable_weights) > 0
    model.optimizer.finalize_variable_values(model.trainable_weights)  # what the trainer does to evaluate
    for v, a in zip(model.trainable_weights, averages):
        np.testing.assert_array_equal(v.numpy(), a)
