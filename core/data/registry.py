"""BloodMNIST metadata, read from medmnist's own registry (`medmnist.INFO["bloodmnist"]`).

Label names, split sizes, file names, URLs and MD5s all come from there: the study attached class names in
the wrong order once, so no label list is ever typed into this project.

`import medmnist` also imports its torch-based dataset classes (and prints a warning without torch), so we
load `medmnist/info.py` alone from the installed package.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from core.errors import UserFacingError

FLAG = "bloodmnist"
DATA_DIR_ENV = "CELLSCOPE_DATA_DIR"


class RegistryError(UserFacingError, RuntimeError):
    pass


@lru_cache(maxsize=1)
def _info_module() -> ModuleType:
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise RegistryError(
            "The medmnist package is not installed. Install it without its torch dependencies: "
            "pip install --no-deps -r requirements-nodeps.txt"
        )
    info_path = Path(list(spec.submodule_search_locations)[0]) / "info.py"
    info_spec = importlib.util.spec_from_file_location("_medmnist_info", info_path)
    assert info_spec is not None and info_spec.loader is not None
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class BloodMNISTInfo:
    labels: tuple[str, ...]
    n_samples: dict[str, int]
    description: str
    license: str
    version: str

    @property
    def n_classes(self) -> int:
        return len(self.labels)


@lru_cache(maxsize=1)
def info() -> BloodMNISTInfo:
    module = _info_module()
    entry = module.INFO[FLAG]
    labels = tuple(entry["label"][str(i)] for i in range(len(entry["label"])))
    return BloodMNISTInfo(
        labels=labels,
        n_samples=dict(entry["n_samples"]),
        description=entry["description"],
        license=entry["license"],
        version=module.__version__,
    )


def label_names() -> tuple[str, ...]:
    return info().labels


def short_label(name: str) -> str:
    """'immature granulocytes(myelocytes, ...)' -> 'immature granulocytes' for tight displays."""
    return name.split("(")[0].strip()


def file_name(size: int) -> str:
    return f"{FLAG}.npz" if size == 28 else f"{FLAG}_{size}.npz"


def url_and_md5(size: int) -> tuple[str, str]:
    entry = _info_module().INFO[FLAG]
    suffix = "" if size == 28 else f"_{size}"
    try:
        return entry[f"url{suffix}"], entry[f"MD5{suffix}"]
    except KeyError:
        raise RegistryError(f"medmnist {info().version} has no BloodMNIST file at {size} px") from None


def data_root() -> Path:
    """medmnist's default folder (~/.medmnist), shared with other medmnist users, unless overridden."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(os.path.expanduser("~")) / ".medmnist"


def local_path(size: int, root: Path | None = None) -> Path:
    return (root or data_root()) / file_name(size)


def available_sizes(root: Path | None = None) -> dict[int, Path]:
    """BloodMNIST sizes whose npz is present locally."""
    from core.config import SIZES  # noqa: PLC0415  (config imports this module)

    return {s: local_path(s, root) for s in SIZES if local_path(s, root).is_file()}
