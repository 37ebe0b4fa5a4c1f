"""Fold models in formats that carry data, never code, and the SHA-256 list that pins a bundle's files.

A pickle (``joblib``, ``torch.load(weights_only=False)``) runs whatever its author put in it, so a
model bundle made of pickles lets whoever can write the bundle run code on the machine that loads
it. Here every fold model is saved in one of three formats, chosen by what it is:

- ``fold<k>.pt``: torch tensors only (a state dict; a frozen-feature head's standardisation ``mu``
  and ``sd`` as tensors, ``in_dim`` an int), read with ``torch.load(weights_only=True)``;
- ``fold<k>.lgbm.txt``: a LightGBM stacker's booster in LightGBM's own text model format (its best
  iteration's trees only, so ``predict`` needs no iteration count); ``load_model`` returns the
  ``lightgbm.Booster`` and ``LGBMStacker.from_booster`` wraps it;
- ``fold<k>.skops``: scikit-learn objects (TF-IDF vectorisers and linear models, k-NN banks, the
  linear second levels) through ``skops.io``, loaded only when every type the file names is in
  ``TRUSTED_TYPES`` (or a type skops itself trusts: numpy arrays, scikit-learn estimators).

``file_digests`` / ``check_digests``: export records the SHA-256 of every file of a bundle in its
manifest; loading refuses a changed, missing or unlisted file with one line naming it, before any
model is read.

A base-layer module (``artifacts.Experiment.save_model`` writes through it), so it names the model
classes it meets by their attributes, never by importing them.
"""
from __future__ import annotations

import copy
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from rakuten.errors import RakutenError

# Model file suffixes, safest first (the order ``model_file`` looks for them in). ``joblib`` is the
# pickle format of runs made before this module: read from a run's own workdir only (``load_run_model``).
SAFE_SUFFIXES = (".pt", ".lgbm.txt", ".skops")
LEGACY_SUFFIX = ".joblib"

# The classes a ``.skops`` file may name beyond what skops trusts by default (numpy, scikit-learn
# estimators): this project's model classes, whose state is plain attributes, and the
# scikit-learn/scipy helpers they hold. Anything else in a file is refused, unloaded.
TRUSTED_TYPES = (
    "rakuten.models.tfidf.TfidfLinear",
    "rakuten.models.stackers.LogitBlend",
    "rakuten.models.stackers.CaruanaBlend",
    "rakuten.models.stackers.LogRegStacker",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "scipy.sparse._csr.csr_matrix",
)


class ModelFileError(RakutenError):
    """A model or bundle file that is missing, truncated, changed or unreadable; one line naming it."""


class UnsafeModelError(ModelFileError):
    """A model file in a format that could run code, or naming a type outside ``TRUSTED_TYPES``."""


def suffix_of(path: str | Path) -> str:
    """The model-format suffix of ``path`` (``.lgbm.txt`` counts as one), or '' for none of them."""
    name = Path(path).name
    return next((s for s in (*SAFE_SUFFIXES, LEGACY_SUFFIX) if name.endswith(s)), "")


def _plain(v):
    """Configs (dict subclasses) as plain dicts: skops trusts ``dict``, not ``rakuten.config.Config``."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    return v


def _int_vocabulary(vec):
    """A fitted vectoriser whose ``vocabulary_`` maps to Python ints (a shallow copy), else ``vec``.
    scikit-learn stores numpy int64 column numbers, which skops writes as one .npy file each: 84k of
    them in a cpu bundle, 17 of its 19 s of loading. An int indexes the same column."""
    voc = getattr(vec, "vocabulary_", None)
    if isinstance(voc, dict) and any(type(i) is not int for i in voc.values()):
        vec = copy.copy(vec)
        vec.vocabulary_ = {t: int(i) for t, i in voc.items()}
    return vec


def _skops_ready(obj):
    """A copy of ``obj`` (a fold's dict of fitted objects, or a second-level estimator) in which a
    model's ``cfg`` (a TF-IDF model keeps its config section) is a plain dict and every vectoriser's
    vocabulary maps to ints (``_int_vocabulary``); the other fitted objects are shared, not copied."""
    def fix(v):
        cfg = getattr(v, "cfg", None)
        if isinstance(cfg, dict) and type(cfg) is not dict:
            v = copy.copy(v)
            v.cfg = _plain(cfg)
        v = _int_vocabulary(v)
        for attr in ("word", "char"):    # the TF-IDF model's vectorisers (models.tfidf)
            sub = getattr(v, attr, None)
            fixed = _int_vocabulary(sub)
            if fixed is not sub:
                v = copy.copy(v)
                setattr(v, attr, fixed)
        return v
    if isinstance(obj, dict):
        return {k: fix(v) for k, v in obj.items()}
    return fix(obj)


def _torch_ready(obj):
    """numpy arrays at any depth (a head's ``mu``/``sd``, a fusion fold's statistics and alignment
    maps) as tensors and numpy scalars as Python numbers: ``weights_only`` loading reads tensors and
    plain containers, not numpy's pickled objects."""
    # heavy: torch
    import torch
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _torch_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_torch_ready(v) for v in obj)
    return obj


def numpy_tree(obj):
    """Tensors at any depth back as numpy arrays (what ``_torch_ready`` turned into tensors), for a
    kept artifact that predicts with numpy (a fusion fold's statistics and maps)."""
    # heavy: torch
    import torch
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: numpy_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(numpy_tree(v) for v in obj)
    return obj


def serialize_model(obj, torch_weights: bool = False) -> tuple[str, bytes]:
    """(suffix, bytes) of ``obj`` in its data-only format. ``torch_weights``: ``obj`` is a dict of
    tensors/arrays/ints (``state_dict`` and, for heads, ``mu``, ``sd``, ``in_dim``); a LightGBM stacker
    (it has ``booster_``) becomes LightGBM text; anything else a skops file."""
    if torch_weights:
        # heavy: torch
        import torch
        buf = io.BytesIO()
        torch.save(_torch_ready(obj), buf)
        return ".pt", buf.getvalue()
    if hasattr(obj, "booster_"):
        return ".lgbm.txt", obj.booster_.model_to_string(num_iteration=int(obj.best_iteration_)).encode("utf-8")
    # heavy: skops (scikit-learn)
    import skops.io as sio
    # deflated: TF-IDF vocabularies and sparse banks shrink about 4x (what compressed joblib gave);
    # loading is unchanged (zip reads either)
    return ".skops", sio.dumps(_skops_ready(obj), compression=zipfile.ZIP_DEFLATED, compresslevel=6)


def load_model(path: str | Path):
    """Read a model file written by ``serialize_model``, never running code from it: a pickle
    (``.joblib`` or any other suffix), a torch file holding more than tensors, or a ``.skops`` file
    naming a type outside ``TRUSTED_TYPES`` raise ``UnsafeModelError``; a missing or truncated file
    ``ModelFileError``. Returns the torch dict (arrays outside ``state_dict`` as numpy), the ``lightgbm.Booster``, or
    the scikit-learn object."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in SAFE_SUFFIXES:
        raise UnsafeModelError(f"{path}: not a data-only model format ({', '.join(SAFE_SUFFIXES)}); "
                               "pickles are never loaded from a bundle")
    if not path.is_file():
        raise ModelFileError(f"{path}: missing")
    if suffix == ".pt":
        # heavy: torch
        import torch
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:   # pickle.UnpicklingError for a foreign object; RuntimeError for bad bytes
            raise UnsafeModelError(f"{path}: refused by torch's weights-only loader "
                                   f"({str(e).strip().splitlines()[0][:200]})") from None
        if not isinstance(state, dict):
            raise UnsafeModelError(f"{path}: holds a {type(state).__name__}, not a dict of weights")
        # every array outside a network's state_dict back to numpy (a head's mu/sd, a fusion fold's
        # statistics and alignment maps), as serialize_model was given them
        return {k: v if k == "state_dict" else numpy_tree(v) for k, v in state.items()}
    if suffix == ".lgbm.txt":
        # heavy: LightGBM
        import lightgbm as lgb
        try:
            return lgb.Booster(model_str=path.read_text(encoding="utf-8"))
        except (lgb.basic.LightGBMError, UnicodeDecodeError, ValueError) as e:
            raise ModelFileError(f"{path}: not a LightGBM text model ({str(e).splitlines()[0][:200]})") from None
    # heavy: skops (scikit-learn)
    import skops.io as sio
    data = path.read_bytes()
    try:
        found = sio.get_untrusted_types(data=data)
    except Exception as e:   # zipfile.BadZipFile (a pickle or junk), KeyError/JSON errors in its schema
        raise UnsafeModelError(f"{path}: not a skops file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    untrusted = sorted(set(found) - set(TRUSTED_TYPES))
    if untrusted:
        raise UnsafeModelError(f"{path}: names type(s) outside the trusted list: {', '.join(untrusted[:5])}")
    try:
        return sio.loads(data, trusted=list(found))
    except Exception as e:   # a schema skops cannot rebuild
        raise ModelFileError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def load_run_model(path: str | Path):
    """A fold model from a run's own workdir (what ``export.py`` bundles): ``load_model``, or for a run
    made before this module, its pickle (``.joblib``, or a ``.pt`` with numpy arrays). The workdir is
    the machine's own output, trusted like the code that wrote it; a bundle is never read this way."""
    path = Path(path)
    try:
        return load_model(path)
    except UnsafeModelError:
        try:
            if suffix_of(path) == LEGACY_SUFFIX:
                # heavy: joblib (scikit-learn); the legacy pickle of the run's own workdir
                import joblib
                return joblib.load(path)
            if suffix_of(path) == ".pt":
                # heavy: torch; a head saved with numpy mu/sd before they were tensors
                import torch
                state = torch.load(path, map_location="cpu", weights_only=False)
                return {k: np.asarray(v) if k in ("mu", "sd") else v for k, v in state.items()}
        except Exception as e:   # EOFError, UnpicklingError, RuntimeError: a truncated or foreign file
            raise ModelFileError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                                 "rerun the fold with --force") from None
        raise


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, all 64 digits (``artifacts.file_hash`` keeps 16)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digests(root: str | Path, skip: tuple[str, ...] = ("manifest.json",)) -> dict[str, str]:
    """{relative path: SHA-256} of every file under ``root`` except ``skip`` (sorted by path)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() not in skip}


def check_digests(root: str | Path, digests: dict[str, str], skip: tuple[str, ...] = ("manifest.json",)) -> None:
    """Raise ``ModelFileError`` (one line naming the file) unless the files under ``root`` are exactly
    those of ``digests`` with the same SHA-256: a changed, missing or added file is refused."""
    root = Path(root)
    for rel, want in digests.items():
        p = root / rel
        if not p.is_file():
            raise ModelFileError(f"{p}: missing (listed in {root / 'manifest.json'})")
        if sha256(p) != want:
            raise ModelFileError(f"{p}: changed since export (SHA-256 differs from {root / 'manifest.json'}); "
                                "re-export the bundle or restore the file")
    extra = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.relative_to(root).as_posix() not in digests
                   and p.relative_to(root).as_posix() not in skip)
    if extra:
        raise ModelFileError(f"{root / extra[0]}: not listed in {root / 'manifest.json'} (a file added after "
                            "export); remove it or re-export the bundle")


__all__ = ["LEGACY_SUFFIX", "SAFE_SUFFIXES", "TRUSTED_TYPES", "ModelFileError", "UnsafeModelError", "check_digests",
           "file_digests", "load_model", "load_run_model", "numpy_tree", "serialize_model", "sha256", "suffix_of"]
