"""A run's feature map: where its test images lie in the network's own feature space, drawn in 2-D.

What it is: the pooled features (`avg_pool`, the input of the classifier head) of every test image, reduced to
two dimensions. With `umap` importable (PyPI's umap-learn) the reduction is UMAP; otherwise scikit-learn's
PCA to PCA_DIMS dimensions, then t-SNE with a fixed seed. Both keep neighbours together and say little about
far distances: two clusters far apart on the map are different to the network, but how far apart they are,
and a cluster's size, mean almost nothing. `EmbeddingMap.method` says which one made the map.

Points are the test images in order: point i is test image i of the run's test split (the order of its stored
test predictions, core.evaluation.predictions, from which its predicted class and confidence come), so the
map, the Confusions page and the data file agree on every index.

New images (an upload on Classify) are placed by the map's own method when it has one that maps a new point
(PCA: a projection), else (t-SNE, UMAP whose fitted model is not kept) at the mean position of their
PLACE_NEIGHBOURS nearest test images in the feature space, weighted by inverse distance; `Placement.how` says
which. Their nearest TRAINING images are found in the full feature space (never on the 2-D map), among up to
TRAIN_LIMIT training images (stratified, fixed seed; real indices into the run's training split).

Computed once per run (a core.inference.precompute step, in the background the first time a page asks: not at
the end of every training job, since its t-SNE takes as long as a quick run trains) and cached as
`embedding_map.npz` in the run folder, written atomically and versioned; a damaged or older file is computed
again. The JPEG thumbnails (at most THUMB_PX a side) of the test images and of the training images kept are in
it too, so neither drawing the map nor showing an upload's neighbours reads the data file (about 10 MiB for a
64 px run of the full PBC split). NumPy and scikit-learn; no TensorFlow here (the caller passes the model's
embedding function).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.data.dataset import stratified_subset
from core.errors import UserFacingError
from core.store.runs import open_run

MAP_FILE = "embedding_map.npz"
VERSION = 1
METHODS = ("umap", "tsne", "pca")
METHOD_TITLES = {"umap": "UMAP", "tsne": "t-SNE (after PCA to 50 dimensions)", "pca": "PCA"}
PCA_DIMS = 50  # t-SNE and UMAP run on this many principal components of the features
SEED = 0
TRAIN_LIMIT = 4000  # training images (stratified) among which an upload's nearest neighbours are found
PLACE_NEIGHBOURS = 10  # test images whose map positions place a new image when the method cannot
NEIGHBOURS = 6  # nearest training images shown for an upload
THUMB_PX = 64  # thumbnails for the map's hover: at most this many pixels a side
THUMB_QUALITY = 85
CHUNK = 256  # images embedded per call, so progress can be reported
TSNE_THREADS = 1  # OpenMP threads of t-SNE (see `reduce`)

EmbedFn = Callable[[np.ndarray], np.ndarray]  # uint8 (N, S, S, 3) -> features (N, d)
Progress = Callable[[float], None]


class EmbeddingError(UserFacingError, RuntimeError):
    pass


def umap_available() -> bool:
    try:
        import umap  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def default_method() -> str:
    return "umap" if umap_available() else "tsne"


@dataclass(frozen=True)
class Placement:
    xy: np.ndarray  # (n, 2) map positions of new images
    how: str  # one sentence: how they were placed


@dataclass(frozen=True)
class Neighbours:
    train_index: np.ndarray  # (n, k) indices into the run's training split, nearest first
    train_labels: np.ndarray  # (n, k) their true classes
    distance: np.ndarray  # (n, k) Euclidean distances in the feature space
    thumbnails: list[list[bytes]]  # (n, k) their JPEG thumbnails


@dataclass(frozen=True)
class EmbeddingMap:
    xy: np.ndarray  # (N, 2) float32: point i is test image i
    y_true: np.ndarray  # (N,) int64, from the data file (as the stored test predictions hold it)
    y_pred: np.ndarray  # (N,) int64, the stored test predictions
    confidence: np.ndarray  # (N,) float32, the predicted class's probability
    method: str  # one of METHODS
    labels: tuple[str, ...]  # class names, as metrics.json names them
    features: np.ndarray  # (N, d) float16: the test images' features (to place new images)
    mean: np.ndarray  # (d,) float32: the features' mean (PCA)
    components: np.ndarray  # (p, d) float32: principal axes (PCA; the first two make a PCA map)
    thumbs: np.ndarray  # (total,) uint8: the test images' JPEG thumbnails, one after the other
    thumb_ends: np.ndarray  # (N,) int64: where each thumbnail ends in `thumbs`
    path: Path | None = None  # the file it was read from (training features are read from it on demand)

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @property
    def correct(self) -> np.ndarray:
        return self.y_true == self.y_pred

    @property
    def method_title(self) -> str:
        return METHOD_TITLES[self.method]

    def thumbnail(self, i: int) -> bytes:
        start = int(self.thumb_ends[i - 1]) if i > 0 else 0
        return self.thumbs[start:int(self.thumb_ends[i])].tobytes()

    def thumbnails(self) -> list[bytes]:
        return _split(self.thumbs, self.thumb_ends)

    def place(self, features: np.ndarray) -> Placement:
        """Map positions of new images from their features (n, d)."""
        f = np.asarray(features, np.float32).reshape(len(features), -1)
        if self.method == "pca":
            return Placement(((f - self.mean) @ self.components[:2].T).astype(np.float32),
                             "placed by the map's own projection (PCA)")
        index, distance = _nearest(self.features.astype(np.float32), f, PLACE_NEIGHBOURS)
        weights = 1.0 / np.maximum(distance, 1e-6)
        xy = (self.xy[index] * weights[..., None]).sum(axis=1) / weights.sum(axis=1, keepdims=True)
        return Placement(xy.astype(np.float32),
                         f"{METHOD_TITLES[self.method].split(' ')[0]} cannot place a new image, so it is drawn at "
                         f"the mean position of its {index.shape[1]} nearest test images in the feature space "
                         "(weighted by closeness)")

    def to_bytes(self, train_index: np.ndarray, train_labels: np.ndarray, train_features: np.ndarray,
                 train_thumbs: tuple[np.ndarray, np.ndarray]) -> bytes:
        """The file: the map, and the training subset's indices, classes, features and thumbnails."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf, version=VERSION, xy=self.xy, y_true=self.y_true, y_pred=self.y_pred, confidence=self.confidence,
            method=np.array(self.method), labels=np.array(self.labels), features=self.features, mean=self.mean,
            components=self.components, thumbs=self.thumbs, thumb_ends=self.thumb_ends,
            train_index=np.asarray(train_index, np.int64), train_labels=np.asarray(train_labels, np.int64),
            train_features=np.asarray(train_features, np.float16), train_thumbs=train_thumbs[0],
            train_thumb_ends=train_thumbs[1])
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path) -> "EmbeddingMap":
        """The map from its file (not the training features: `neighbours` reads them). ValueError or KeyError
        for a damaged file or another version."""
        with np.load(path, allow_pickle=False) as f:
            if int(f["version"]) != VERSION:
                raise ValueError(f"{path.name}: version {int(f['version'])}, expected {VERSION}")
            found = cls(f["xy"].astype(np.float32), f["y_true"].astype(np.int64), f["y_pred"].astype(np.int64),
                        f["confidence"].astype(np.float32), str(f["method"]), tuple(str(x) for x in f["labels"]),
                        f["features"], f["mean"], f["components"], f["thumbs"], f["thumb_ends"].astype(np.int64),
                        Path(path))
        n = len(found.y_true)
        if found.method not in METHODS or any(len(a) != n for a in (found.xy, found.y_pred, found.confidence,
                                                                     found.features, found.thumb_ends)):
            raise ValueError(f"{path.name}: arrays of different lengths")
        if n and (found.thumb_ends[-1] != len(found.thumbs) or not np.isfinite(found.xy).all()):
            raise ValueError(f"{path.name}: damaged")
        return found

    def neighbours(self, features: np.ndarray, k: int = NEIGHBOURS) -> Neighbours:
        """The k nearest training images of each new image (n, d) in the feature space, nearest first."""
        if self.path is None:
            raise EmbeddingError("This map was not read from a run folder, so it has no training features.")
        try:
            with np.load(self.path, allow_pickle=False) as f:
                index, labels = f["train_index"].astype(np.int64), f["train_labels"].astype(np.int64)
                train = f["train_features"].astype(np.float32)
                thumbs, ends = f["train_thumbs"], f["train_thumb_ends"].astype(np.int64)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise EmbeddingError(f"{self.path.name}: cannot read the training features ({e})") from None
        nearest, distance = _nearest(train, np.asarray(features, np.float32).reshape(len(features), -1), k)
        pieces = _split(thumbs, ends)
        return Neighbours(index[nearest], labels[nearest], distance, [[pieces[j] for j in row] for row in nearest])


def _split(data: np.ndarray, ends: np.ndarray) -> list[bytes]:
    raw, starts = data.tobytes(), np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return [raw[s:e] for s, e in zip(starts.tolist(), ends.tolist())]


def _nearest(reference: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices into `reference`, distances), each (n, k), of each query's k nearest rows, nearest first."""
    k = max(1, min(k, len(reference)))
    d2 = (queries ** 2).sum(1)[:, None] - 2.0 * queries @ reference.T + (reference ** 2).sum(1)[None, :]
    d2 = np.maximum(d2, 0.0)
    part = np.argpartition(d2, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(d2, part, axis=1).argsort(axis=1, kind="stable")
    index = np.take_along_axis(part, order, axis=1)
    return index, np.sqrt(np.take_along_axis(d2, index, axis=1))


def reduce(features: np.ndarray, method: str | None = None, seed: int = SEED
           ) -> tuple[np.ndarray, str, np.ndarray, np.ndarray]:
    """(N, d) features -> ((N, 2) map, method used, PCA mean (d,), PCA components (p, d)). `method`: one of
    METHODS, default UMAP where importable, else t-SNE."""
    from sklearn.decomposition import PCA  # noqa: PLC0415

    method = method or default_method()
    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r} (one of {', '.join(METHODS)})")
    x = np.asarray(features, np.float32)
    n, d = x.shape
    dims = max(2, min(PCA_DIMS, d, n - 1))
    pca = PCA(n_components=dims, random_state=seed).fit(x)
    reduced = pca.transform(x)
    if method == "pca":
        xy = reduced[:, :2]
    elif method == "umap":
        import umap  # noqa: PLC0415 - only where the user installed it

        xy = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1)).fit_transform(reduced)
    else:
        from sklearn.manifold import TSNE  # noqa: PLC0415
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 - scikit-learn's own dependency

        # One OpenMP thread: on this project's 2-core machines, shared with training jobs, t-SNE's threads wait
        # for each other (128 points: 1.2 s on one thread, 60 s on two; 3,422: 78 s, over 8 minutes).
        with threadpool_limits(limits=TSNE_THREADS, user_api="openmp"):
            xy = TSNE(n_components=2, perplexity=float(min(30.0, max(2.0, (n - 1) / 3.0))), init="pca",
                      random_state=seed).fit_transform(reduced)
    return (np.asarray(xy, np.float32), method, pca.mean_.astype(np.float32),
            pca.components_.astype(np.float32))


def thumbnails(images: np.ndarray, px: int = THUMB_PX) -> tuple[np.ndarray, np.ndarray]:
    """JPEG thumbnails of uint8 images, at most `px` a side (small ones enlarged by a whole factor with
    nearest neighbours, so their pixels stay crisp), as (concatenated bytes, end offsets)."""
    from PIL import Image  # noqa: PLC0415

    parts, ends, total = [], [], 0
    for image in images:
        im = Image.fromarray(np.asarray(image, np.uint8))
        side = max(im.size)
        if side > px:
            im = im.resize((max(1, im.width * px // side), max(1, im.height * px // side)), Image.Resampling.BICUBIC)
        elif side * 2 <= px:
            k = px // side
            im = im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=THUMB_QUALITY)
        parts.append(buf.getvalue())
        total += len(parts[-1])
        ends.append(total)
    return np.frombuffer(b"".join(parts), np.uint8).copy(), np.asarray(ends, np.int64)


def _embedded(embed: EmbedFn, images: np.ndarray, progress: Progress, done: int, total: int) -> np.ndarray:
    out = []
    for start in range(0, len(images), CHUNK):
        out.append(np.asarray(embed(images[start:start + CHUNK]), np.float32))
        progress((done + min(start + CHUNK, len(images))) / max(total, 1))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def compute(run_dir: str | Path, embed: EmbedFn, predicted: Callable[[], "object"],
            progress: Progress | None = None, method: str | None = None) -> tuple[EmbeddingMap, bytes]:
    """The run's map, computed: its test images' features (`embed`), their predictions (`predicted()`: the
    run's stored TestPredictions), up to TRAIN_LIMIT training images' features, the 2-D reduction and the
    thumbnails. Returns the map and its file's bytes. EmbeddingError when the data is not here or does not
    match the stored predictions."""
    progress = progress or (lambda f: None)
    run = open_run(run_dir)
    try:
        data = run.training_data()
    except UserFacingError as e:
        raise EmbeddingError(f"The run's dataset is not on this machine ({e})") from None
    images, y_true = run.test_split()
    found = predicted()
    if len(found) != len(y_true) or not np.array_equal(np.asarray(found.y_true), y_true):
        raise EmbeddingError(f"The run's stored test predictions do not match the test split of {data.name}: "
                             "delete test_predictions.npz in the run folder to predict it again.")
    try:
        with np.load(data, allow_pickle=False) as npz:
            all_train = np.asarray(npz["train_labels"]).reshape(-1).astype(np.int64)
            train_index = stratified_subset(all_train, TRAIN_LIMIT, SEED)
            train_images = npz["train_images"][train_index]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise EmbeddingError(f"{data.name}: cannot read the training images ({e})") from None
    total = len(images) + len(train_images)
    features = _embedded(embed, images, lambda f: progress(0.8 * f), 0, total)
    train_features = _embedded(embed, train_images, lambda f: progress(0.8 * f), len(images), total)
    if features.ndim != 2 or features.shape[1] == 0:
        raise EmbeddingError("This run's model has no pooled feature layer (avg_pool) to map.")
    xy, used, mean, components = reduce(features, method)
    progress(0.95)
    thumbs, ends = thumbnails(images)
    probabilities = np.asarray(found.probabilities, np.float32)
    y_pred = probabilities.argmax(axis=1).astype(np.int64)
    labels = tuple(str(x) for x in run.metrics["test"]["labels"])
    emap = EmbeddingMap(xy, y_true.astype(np.int64), y_pred, probabilities.max(axis=1), used, labels,
                        features.astype(np.float16), mean, components, thumbs, ends)
    progress(1.0)
    return emap, emap.to_bytes(train_index, all_train[train_index], train_features, thumbnails(train_images))


def load_or_compute(run_dir: str | Path, embed: EmbedFn, predicted: Callable[[], "object"],
                    progress: Progress | None = None, method: str | None = None) -> EmbeddingMap:
    """The run's map from `embedding_map.npz`, computing and saving it the first time (or when the file is
    damaged or from another version)."""
    run = open_run(run_dir)
    made: dict[str, bytes] = {}

    def fresh() -> EmbeddingMap:
        emap, made["bytes"] = compute(run_dir, embed, predicted, progress, method)
        return emap

    emap = run.derived(MAP_FILE, EmbeddingMap.from_file, fresh, lambda _: made["bytes"])
    if emap.path is None and (run.path / MAP_FILE).is_file():  # just written: its training features are there
        emap = EmbeddingMap(**{**emap.__dict__, "path": run.path / MAP_FILE})
    return emap


def cached(run_dir: str | Path) -> EmbeddingMap | None:
    """The run's map when its file is there and readable, else None (never computes)."""
    path = Path(run_dir) / MAP_FILE
    try:
        return EmbeddingMap.from_file(path) if path.is_file() else None
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile):
        return None
