"""What each recipe preset reached when it was measured on this project's machine: one record per seed of the
exact command a user runs (`python -m core train --preset NAME --data FILE --seed S`), with its test
accuracy, monocyte and immature granulocyte F1, training seconds and whole-command seconds.

`preset_figures.json` beside this module is written only by `benchmarks/preset_figures.py`, which runs those
commands; the Train page's preset cards and `python -m core presets` read it through `load()`.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from core.store.io import write_json

FIGURES_PATH = Path(__file__).with_name("preset_figures.json")


@dataclass(frozen=True)
class SeedFigures:
    """One seed's run of the preset's command."""

    seed: int
    val_accuracy: float
    test_accuracy: float
    monocyte_f1: float
    ig_f1: float  # immature granulocytes
    train_seconds: float  # the epochs' training steps, as the run records them
    command_seconds: float  # the whole command, start to finish (import, data, training, evaluation, writes)
    best_epoch: int
    tta_test_accuracy: float | None = None  # reported beside, never instead
    # Presets measured on other labs' cells too (robust): the run applied unchanged to an external set with
    # cell-centred framing (all 8 classes, and the classes it shares with BloodMNIST), and the corruption
    # benchmark's clean and mean corrupted accuracy on the test split. None where not measured.
    external_accuracy: float | None = None
    external_shared_accuracy: float | None = None
    clean_accuracy: float | None = None
    corrupted_accuracy: float | None = None


@dataclass(frozen=True)
class MeanSd:
    mean: float
    sd: float  # sample standard deviation (0 for one seed)

    def format(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


@dataclass(frozen=True)
class PresetFigures:
    preset: str
    command: str  # with {seed} where each seed's value went
    machine: str  # where it was measured
    measured: str  # date, YYYY-MM-DD
    seeds: tuple[SeedFigures, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)  # the preset's values when measured
    external: str = ""  # the external set the seeds were applied to, where measured

    def stat(self, name: str) -> MeanSd:
        values = [float(getattr(s, name)) for s in self.seeds]
        return MeanSd(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)

    def has(self, name: str) -> bool:
        """Whether every seed measured `name` (the external and corruption figures are optional)."""
        return all(getattr(s, name) is not None for s in self.seeds)

    @property
    def seed_list(self) -> str:
        return ", ".join(str(s.seed) for s in self.seeds)

    def summary(self) -> str:
        """One line: 'test accuracy 0.962 ± 0.002, monocyte F1 ..., IG F1 ...[, the external set and the corruption
        benchmark where measured]; 3.1 min whole command (seeds 0, 1, 2)'."""
        minutes = self.stat("command_seconds").mean / 60
        other = ""
        if self.has("external_shared_accuracy"):
            other += (f", {self.external} with cell framing {self.stat('external_shared_accuracy').format(2)} on "
                      f"the shared classes ({self.stat('external_accuracy').format(2)} 8-way)")
        if self.has("corrupted_accuracy"):
            other += f", mean corrupted accuracy {self.stat('corrupted_accuracy').format()}"
        return (f"test accuracy {self.stat('test_accuracy').format()}, monocyte F1 "
                f"{self.stat('monocyte_f1').format()}, IG F1 {self.stat('ig_f1').format()}{other}; "
                f"{self.stat('train_seconds').mean:.0f} s training, {minutes:.1f} min whole command "
                f"(mean ± sd of seeds {self.seed_list})")

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "command": self.command, "machine": self.machine,
                "measured": self.measured, "seeds": [asdict(s) for s in self.seeds], "settings": dict(self.settings),
                "external": self.external}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PresetFigures":
        return cls(preset=str(d["preset"]), command=str(d["command"]), machine=str(d["machine"]),
                   measured=str(d["measured"]), seeds=tuple(SeedFigures(**s) for s in d["seeds"]),
                   settings=dict(d.get("settings", {})), external=str(d.get("external", "")))


@lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int) -> dict[str, PresetFigures]:
    data = json.loads(path.read_text())
    return {key: PresetFigures.from_dict(d) for key, d in data.items()}


def load(path: Path = FIGURES_PATH) -> dict[str, PresetFigures]:
    """Preset key -> its figures; empty where nothing was measured yet."""
    try:
        return _load(path, path.stat().st_mtime_ns)
    except FileNotFoundError:
        return {}


def save(figures: Sequence[PresetFigures], path: Path = FIGURES_PATH) -> None:
    """Replace the named presets' figures, keeping the others (atomically)."""
    merged = {**load(path), **{f.preset: f for f in figures}}
    write_json(path, {key: f.to_dict() for key, f in sorted(merged.items())})
