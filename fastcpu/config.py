"""Configuration: dataclasses + YAML + ``section.key=value`` overrides. Unknown keys are errors.

A config file is YAML with the sections of ``Config`` (``model``, ``optimizer``, ``train``,
``data``); every key is typed by the dataclass field it fills, and a wrong key or type fails with
one line naming the file, the key and what was expected.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import re

import yaml


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats the YAML 1.2 way too: ``5e-5``, ``1E3`` (YAML 1.1,
    PyYAML's schema, wants a dot in the mantissa and would read them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def yaml_load(text: str):
    """``yaml.safe_load`` with YAML 1.2 floats (see ``_Loader``)."""
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A bad config value or key; the message is one line meant for the user."""


@dataclass
class ModelConfig:
    encoder_layer: int = 4
    encoder_head: int = 2
    encoder_hidden: int = 256
    decoder_layer: int = 6
    decoder_head: int = 2
    decoder_hidden: int = 256
    conv_filter_size: int = 1024
    conv_kernel_size: list = field(default_factory=lambda: [9, 1])
    encoder_dropout: float = 0.2
    decoder_dropout: float = 0.2
    vp_filter_size: int = 256
    vp_kernel_size: int = 3
    vp_dropout: float = 0.5
    pitch_feature: str = "phoneme_level"
    energy_feature: str = "phoneme_level"
    pitch_quantization: str = "linear"
    energy_quantization: str = "linear"
    n_bins: int = 256
    multi_speaker: bool = False
    n_speakers: int = 1
    max_seq_len: int = 1000
    n_mel_channels: int = 80
    n_src_vocab: int = 361
    postnet_embedding_dim: int = 512
    postnet_kernel_size: int = 5
    postnet_n_convolutions: int = 5
    postnet_dropout: float = 0.5
    # bins: [min, max] of normalised pitch / energy (stats.json); the LJSpeech values by default
    pitch_range: list = field(default_factory=lambda: [-2.917079304729967, 11.391254536985784])
    energy_range: list = field(default_factory=lambda: [-1.431044578552246, 8.184337615966797])

    def validate(self, where="model"):
        _positive(self, where, "encoder_layer", "encoder_head", "encoder_hidden", "decoder_layer",
                  "decoder_head", "decoder_hidden", "conv_filter_size", "vp_filter_size",
                  "vp_kernel_size", "n_bins", "n_speakers", "max_seq_len", "n_mel_channels",
                  "n_src_vocab", "postnet_embedding_dim", "postnet_kernel_size",
                  "postnet_n_convolutions")
        if self.encoder_hidden % self.encoder_head or self.decoder_hidden % self.decoder_head:
            raise ConfigError(f"{where}: hidden size must be divisible by the number of heads")
        if self.encoder_hidden != self.decoder_hidden:
            raise ConfigError(f"{where}: encoder_hidden and decoder_hidden must be equal "
                              f"(got {self.encoder_hidden}, {self.decoder_hidden})")
        if len(self.conv_kernel_size) != 2:
            raise ConfigError(f"{where}.conv_kernel_size: expected two kernel sizes, got "
                              f"{self.conv_kernel_size}")
        _numbers(self, where, "conv_kernel_size", int, 2)
        _numbers(self, where, "pitch_range", float, 2)
        _numbers(self, where, "energy_range", float, 2)
        for k, v in (("conv_kernel_size", self.conv_kernel_size), ("vp_kernel_size",
                                                                   [self.vp_kernel_size]),
                     ("postnet_kernel_size", [self.postnet_kernel_size])):
            if any(x < 1 or x % 2 == 0 for x in v):
                raise ConfigError(f"{where}.{k}: kernel sizes must be odd and >= 1 (the "
                                  f"reference pads (K-1)/2 each side to keep the length), got "
                                  f"{getattr(self, k)}")
        from fastcpu.data.symbols import N_VOCAB
        if self.n_src_vocab < N_VOCAB:
            raise ConfigError(f"{where}.n_src_vocab: must be >= {N_VOCAB} (the symbol table "
                              f"and padding), got {self.n_src_vocab}")
        for k in ("pitch_feature", "energy_feature"):
            if getattr(self, k) != "phoneme_level":
                raise ConfigError(f"{where}.{k}: only 'phoneme_level' (the LJSpeech config) is "
                                  f"supported, got {getattr(self, k)!r}")
        for k in ("pitch_quantization", "energy_quantization"):
            if getattr(self, k) not in ("linear", "log"):
                raise ConfigError(f"{where}.{k}: expected 'linear' or 'log', got "
                                  f"{getattr(self, k)!r}")
        for k in ("encoder_dropout", "decoder_dropout", "vp_dropout", "postnet_dropout"):
            if not 0 <= getattr(self, k) < 1:
                raise ConfigError(f"{where}.{k}: must be in [0, 1), got {getattr(self, k)}")
        for k in ("pitch_range", "energy_range"):
            r = getattr(self, k)
            if len(r) != 2 or not r[0] < r[1]:
                raise ConfigError(f"{where}.{k}: expected [min, max] with min < max, got {r}")


@dataclass
class OptimizerConfig:
    lr: float | None = None                 # None: init_lr = hidden ** -0.5 (Noam, the reference)
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-9
    weight_decay: float = 0.0
    grad_clip_thresh: float = 1.0
    grad_acc_step: int = 1
    schedule: str = "noam"                  # noam | exponential | cosine | constant
    warm_up_step: int = 4000
    anneal_steps: list = field(default_factory=lambda: [300000, 400000, 500000])
    anneal_rate: float = 0.3
    decay_rate: float = 0.999995            # exponential: lr * decay_rate ** (step - warm_up)
    min_lr: float = 0.0                     # cosine: floor
    total_step: int = 900000                # cosine: length of the decay

    def validate(self, where="optimizer"):
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"{where}.lr: must be > 0, got {self.lr}")
        _numbers(self, where, "betas", float, 2)
        _numbers(self, where, "anneal_steps", int)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{where}.betas: expected two values in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"{where}.eps: must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            raise ConfigError(f"{where}.weight_decay: must be >= 0, got {self.weight_decay}")
        if not self.grad_clip_thresh > 0:
            raise ConfigError(f"{where}.grad_clip_thresh: must be > 0, got "
                              f"{self.grad_clip_thresh}")
        _positive(self, where, "grad_acc_step", "total_step")
        if self.warm_up_step < 0:
            raise ConfigError(f"{where}.warm_up_step: must be >= 0, got {self.warm_up_step}")
        if self.schedule not in ("noam", "exponential", "cosine", "constant"):
            raise ConfigError(f"{where}.schedule: expected noam | exponential | cosine | constant, "
                              f"got {self.schedule!r}")


def _numbers(obj, where, name, tp, n=None):
    """A list option whose items must be numbers of type ``tp`` (ints also pass as floats)."""
    v = getattr(obj, name)
    ok = all(not isinstance(x, bool) and isinstance(x, int if tp is int else (int, float))
             for x in v)
    if not ok or (n is not None and len(v) != n):
        kind = "integers" if tp is int else "numbers"
        raise ConfigError(f"{where}.{name}: expected {n or 'a list of'} {kind}, got {v!r}")
    setattr(obj, name, [tp(x) for x in v])


def _positive(obj, where, *names):
    for n in names:
        v = getattr(obj, n)
        if not v > 0:
            raise ConfigError(f"{where}.{n}: must be > 0, got {v}")


def _check_type(value, tp, where):
    """Coerce ``value`` to the annotated type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return value
    return value


def from_dict(cls, data, where):
    """Build dataclass ``cls`` from a dict; unknown keys and wrong types raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(tp, v, f"{where}.{k}")
        else:
            kwargs[k] = _check_type(v, tp, f"{where}.{k}")
    return cls(**kwargs)


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__} (a config "
                          f"is sections of key: value)")
    return data or {}


def parse_override(text: str):
    """``section.key=value`` -> (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict, path: list, value, where="--set"):
    d = data
    for p in path[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{where} {'.'.join(path)}: {p} is not a section")
    d[path[-1]] = value


def to_dict(obj) -> dict:
    return asdict(obj)


@dataclass
class LossConfig:
    """Weights of the five loss terms in the training objective (the reference: all 1.0). The
    logged terms stay unweighted; ``loss.weighted`` in metrics.jsonl is the objective."""
    mel: float = 1.0
    postnet_mel: float = 1.0
    pitch: float = 1.0
    energy: float = 1.0
    duration: float = 1.0

    def validate(self, where="loss"):
        import math
        for k in ("mel", "postnet_mel", "pitch", "energy", "duration"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{where}.{k}: must be a finite weight >= 0, got {v}")
        if not any(getattr(self, k) > 0 for k in ("mel", "postnet_mel", "pitch", "energy",
                                                  "duration")):
            raise ConfigError(f"{where}: every weight is 0; nothing would be trained")

    def weights(self) -> dict:
        return {k: float(getattr(self, k)) for k in ("mel", "postnet_mel", "pitch", "energy",
                                                     "duration")}

    def is_default(self) -> bool:
        return all(v == 1.0 for v in self.weights().values())


@dataclass
class DataConfig:
    path: str = ""                          # preprocessed corpus (reference layout); "" = bundled
    train_file: str = "train.txt"
    val_file: str = "val.txt"


@dataclass
class TrainConfig:
    batch_size: int = 16
    group_size: int = 4
    total_step: int = 900000                # stop after this many optimizer steps
    num_epochs: int = 0                     # 0: bounded by total_step only
    log_step: int = 100                     # console / TensorBoard interval (JSON log: every step)
    val_step: int = 1000                    # validation every N steps (and at each epoch end)
    save_step: int = 100000                 # periodic checkpoint every N steps
    synth_step: int = 1000                  # validation sample (mel image + Griffin-Lim audio)
    seed: int = 1234
    threads: int = 0                        # 0: every core
    output_dir: str = "runs"                # the run lives in output_dir/<name>
    keep_last: int = 3                      # periodic + epoch checkpoints kept (0: all)
    epoch_save: int = 1                     # an epoch checkpoint every N epochs (0: none)
    best_with_optimizer: bool = False       # best.safetensors also keeps Adam's moments
    slim_after_final: bool = False          # at a clean end, step/epoch files keep weights only
    early_stop_patience: int = 0            # validations without improvement; 0: off
    divergence_ratio: float = 2.0           # warn when val loss > ratio x train loss; 0: off
    max_nonfinite: int = 5                  # non-finite steps in a row before stopping
    profile_steps: int = 0                  # profile N steps (after the first) -> table + trace
    precision: str = "fp32"                 # GEMM operands: fp32 | bf16 (fp32 master weights)
    init_from: str = ""                     # fine-tune: weights from this checkpoint, run fresh
    reinit: list = field(default_factory=list)   # module names kept freshly initialised
    freeze: list = field(default_factory=list)   # module names not trained
    # texts or "{PH ON ES}" strings synthesised free-running at each sample (synth_step, end)
    sample_sentences: list = field(default_factory=list)

    def validate(self, where="train"):
        _positive(self, where, "batch_size", "group_size", "total_step", "log_step", "val_step",
                  "save_step", "synth_step", "max_nonfinite")
        for k in ("num_epochs", "threads", "keep_last", "early_stop_patience", "profile_steps",
                  "epoch_save"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{where}.{k}: must be >= 0, got {getattr(self, k)}")
        if self.divergence_ratio < 0:
            raise ConfigError(f"{where}.divergence_ratio: must be >= 0, got "
                              f"{self.divergence_ratio}")
        if not self.output_dir:
            raise ConfigError(f"{where}.output_dir: must not be empty")
        if self.seed < 0:
            raise ConfigError(f"{where}.seed: must be >= 0, got {self.seed}")
        import numba
        limit = numba.config.NUMBA_NUM_THREADS
        if self.threads > limit:
            raise ConfigError(f"{where}.threads: {self.threads} asked but this process can use "
                              f"{limit} (the machine's cores, or NUMBA_NUM_THREADS); 0 = all")
        for k in ("reinit", "freeze"):
            v = getattr(self, k)
            if not all(isinstance(x, str) and x for x in v):
                raise ConfigError(f"{where}.{k}: expected a list of module names, got {v!r}")
        if not all(isinstance(x, str) and x.strip() for x in self.sample_sentences):
            raise ConfigError(f"{where}.sample_sentences: expected a list of texts or "
                              f"'{{PH ON ES}}' strings, got {self.sample_sentences!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"{where}.precision: must be fp32 or bf16, got {self.precision!r}")


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def validate(self):
        if not self.name or self.name in (".", "..") or any(c in self.name for c in "/\\\0"):
            raise ConfigError(f"name: {self.name!r} must be a plain directory name (no '/', "
                              f"no '..'): the run lives in train.output_dir/<name>")
        self.model.validate()
        self.optimizer.validate()
        self.train.validate()
        self.loss.validate()
        return self


def load_config(path=None, overrides=()) -> Config:
    """Config from a YAML file (or the defaults) plus ``section.key=value`` overrides."""
    data = load_yaml(path) if path else {}
    where = str(path) if path else "config"
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    return from_dict(Config, data, where).validate()


# ----------------------------------------------------------------------------- the reference's

# (file, path of keys) in the reference's config/<Dataset>/{preprocess,model,train}.yaml ->
# (section, key) here. The reference hard-codes the rest (PostNet 5 x 512, kernel 5, dropout
# 0.5; 361 symbols; group_size 4; the Noam schedule with init_lr = encoder_hidden ** -0.5),
# which are this project's defaults too.
REFERENCE_KEYS = {
    ("model", "transformer", "encoder_layer"): ("model", "encoder_layer"),
    ("model", "transformer", "encoder_head"): ("model", "encoder_head"),
    ("model", "transformer", "encoder_hidden"): ("model", "encoder_hidden"),
    ("model", "transformer", "decoder_layer"): ("model", "decoder_layer"),
    ("model", "transformer", "decoder_head"): ("model", "decoder_head"),
    ("model", "transformer", "decoder_hidden"): ("model", "decoder_hidden"),
    ("model", "transformer", "conv_filter_size"): ("model", "conv_filter_size"),
    ("model", "transformer", "conv_kernel_size"): ("model", "conv_kernel_size"),
    ("model", "transformer", "encoder_dropout"): ("model", "encoder_dropout"),
    ("model", "transformer", "decoder_dropout"): ("model", "decoder_dropout"),
    ("model", "variance_predictor", "filter_size"): ("model", "vp_filter_size"),
    ("model", "variance_predictor", "kernel_size"): ("model", "vp_kernel_size"),
    ("model", "variance_predictor", "dropout"): ("model", "vp_dropout"),
    ("model", "variance_embedding", "pitch_quantization"): ("model", "pitch_quantization"),
    ("model", "variance_embedding", "energy_quantization"): ("model", "energy_quantization"),
    ("model", "variance_embedding", "n_bins"): ("model", "n_bins"),
    ("model", "multi_speaker"): ("model", "multi_speaker"),
    ("model", "max_seq_len"): ("model", "max_seq_len"),
    ("preprocess", "preprocessing", "pitch", "feature"): ("model", "pitch_feature"),
    ("preprocess", "preprocessing", "energy", "feature"): ("model", "energy_feature"),
    ("preprocess", "preprocessing", "mel", "n_mel_channels"): ("model", "n_mel_channels"),
    ("train", "optimizer", "batch_size"): ("train", "batch_size"),
    ("train", "optimizer", "betas"): ("optimizer", "betas"),
    ("train", "optimizer", "eps"): ("optimizer", "eps"),
    ("train", "optimizer", "weight_decay"): ("optimizer", "weight_decay"),
    ("train", "optimizer", "grad_clip_thresh"): ("optimizer", "grad_clip_thresh"),
    ("train", "optimizer", "grad_acc_step"): ("optimizer", "grad_acc_step"),
    ("train", "optimizer", "warm_up_step"): ("optimizer", "warm_up_step"),
    ("train", "optimizer", "anneal_steps"): ("optimizer", "anneal_steps"),
    ("train", "optimizer", "anneal_rate"): ("optimizer", "anneal_rate"),
    ("train", "step", "total_step"): ("train", "total_step"),
    ("train", "step", "log_step"): ("train", "log_step"),
    ("train", "step", "val_step"): ("train", "val_step"),
    ("train", "step", "save_step"): ("train", "save_step"),
    ("train", "step", "synth_step"): ("train", "synth_step"),
}
REFERENCE_FILES = ("preprocess", "model", "train")
# the reference's LJSpeech defaults for what the three files give
REFERENCE_DATA_PATH = "./preprocessed_data/LJSpeech"


def from_reference(directory) -> tuple:
    """A config (as a dict of this project's sections) from the reference's three YAML files in
    ``directory`` (``preprocess.yaml``, ``model.yaml``, ``train.yaml``, as in its
    ``config/LJSpeech/``) -> (dict, notes). ``data.path`` is the reference's
    ``path.preprocessed_path``, resolved against the reference checkout (two levels above the
    directory, where its commands run) when it exists there; the pitch/energy ranges come from
    its ``stats.json`` when that is found. A missing file or key is a ConfigError naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"--reference-config {directory}: not a directory (expected the "
                          f"reference's config/<Dataset>/ with preprocess.yaml, model.yaml, "
                          f"train.yaml)")
    files = {}
    for name in REFERENCE_FILES:
        p = directory / f"{name}.yaml"
        files[name] = load_yaml(p)
    out = {"model": {}, "optimizer": {"schedule": "noam", "lr": None}, "train": {},
           "data": {}}
    notes = []
    for src, (section, key) in REFERENCE_KEYS.items():
        node = files[src[0]]
        for k in src[1:]:
            if not isinstance(node, dict) or k not in node:
                raise ConfigError(f"{directory / (src[0] + '.yaml')}: missing "
                                  f"{'.'.join(src[1:])} (the reference's {src[0]}.yaml has it)")
            node = node[k]
        out[section][key] = node
    name = files["preprocess"].get("dataset")
    if isinstance(name, str) and name:
        out["name"] = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    pre = (files["preprocess"].get("path") or {}).get("preprocessed_path")
    if isinstance(pre, str) and pre:
        p = Path(pre)
        if not p.is_absolute():
            checkout = directory.resolve().parent.parent / p
            p = checkout if checkout.exists() else p
        out["data"]["path"] = str(p)
        stats = p / "stats.json"
        if stats.is_file():
            import json
            s = json.loads(stats.read_text())
            out["model"]["pitch_range"] = [float(x) for x in s["pitch"][:2]]
            out["model"]["energy_range"] = [float(x) for x in s["energy"][:2]]
        else:
            notes.append(f"{p}: no stats.json there; pitch/energy ranges are taken from the "
                         f"checkpoint's bins")
    return out, notes


# ----------------------------------------------------------------------------- bundled configs

def config_dir() -> Path:
    """The configs that come with fastcpu: ``fastcpu/configs`` in an installed package (the
    build copies the repository's top-level ``configs/`` there), else the checkout's own
    ``configs/`` (a source tree or an editable install)."""
    from importlib.resources import files
    installed = Path(str(files("fastcpu"))) / "configs"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "configs"


def bundled_configs() -> dict:
    """name -> path of every bundled config, sorted by name."""
    d = config_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def config_summary(path, width: int = 76) -> str:
    """What a config is for: the first sentence of its leading comment, cut to ``width``."""
    block = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith("#"):
            break
        block.append(line.lstrip("#").strip())
    text = " ".join(block)
    m = re.search(r"[.:;]( |$)", text)
    text = text[:m.start()] if m else text
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"
