"""Trainer configuration: one pydantic model validated before any work starts.

Search spaces address fields by dotted keys (``model.width``, ``optimizer.lr``), so the nesting
here is the public vocabulary of every study file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ncstudy.errors import ConfigError
from ncstudy.onset import RELAXED_NC1, STRICT_NC1, TERMINAL_ACC

DatasetName = Literal["mnist", "fashion_mnist", "cifar10", "mnist5k", "synthetic"]
ModelName = Literal["mlp", "resnet20"]
ActivationName = Literal["relu", "leaky_relu", "gelu", "tanh", "silu"]
OptimizerName = Literal["adam", "sgd", "adamw"]
ScheduleName = Literal["cosine", "multistep", "constant"]


#: Every config model: unknown keys refused; strict types (a YAML `true` is not a width, "256" is not
#: an int and 256.0 is not an epoch count); no `.inf` or `.nan` where a number is meant.
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Strict(BaseModel):
    model_config = ConfigDict(**STRICT, validate_assignment=True)


class DataConfig(_Strict):
    name: DatasetName = "mnist5k"
    root: str | None = Field(None, description="dataset root; default $NCSTUDY_DATA or ~/.cache/ncstudy")
    download: bool = Field(False, description="let torchvision download when the files are missing")
    n_train: int | None = Field(None, gt=0, description="class-balanced training subset size")
    n_test: int | None = Field(None, gt=0, description="test subset size (synthetic: test set size)")
    seed: int = Field(0, description="seed of the subset draw and of the synthetic generator")
    num_classes: int = Field(10, ge=2, description="synthetic only")
    dim: int = Field(32, gt=0, description="synthetic only: input dimension")
    separation: float = Field(4.0, gt=0, description="synthetic only: class-mean spread / noise")
    shape: list[int] | None = Field(
        None, min_length=1, description="synthetic only: per-sample shape such as [3, 32, 32]; overrides dim"
    )

    @field_validator("shape")
    @classmethod
    def _positive_shape(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError("every entry of shape must be a positive integer")
        return v


class ModelConfig(_Strict):
    name: ModelName = "mlp"
    depth: int = Field(5, gt=0, description="MLP hidden layers")
    width: int = Field(512, gt=0, description="MLP hidden width")
    activation: ActivationName = "relu"


class OptimizerConfig(_Strict):
    name: OptimizerName = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0, description="coupled L2 for adam/sgd, decoupled for adamw")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = True
    schedule: ScheduleName = "cosine"
    milestones_ce: list[int] = Field(default_factory=list, description="phase-local epochs (multistep)")
    milestones_mse: list[int] = Field(default_factory=list, description="phase-local epochs (multistep)")
    gamma: float = Field(0.1, gt=0, le=1)

    @field_validator("milestones_ce", "milestones_mse")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(m <= 0 for m in v):
            raise ValueError("milestones must be positive phase-local epochs")
        return sorted(v)


class EvalConfig(_Strict):
    nc_every: int = Field(10, gt=0, description="evaluate every this many epochs (and at each phase end)")
    terminal_acc: float = Field(TERMINAL_ACC, gt=0, le=1, description="train accuracy that starts NC logging")
    strict_threshold: float = Field(STRICT_NC1, gt=0, lt=1)
    relaxed_threshold: float = Field(RELAXED_NC1, gt=0, lt=1)
    onset_phase2_only: bool = Field(True, description="T_NC counts only phase-2 evaluations")
    stop_at_onset: bool = False
    batch_size: int = Field(4096, gt=0, description="evaluation batch size")

    @model_validator(mode="after")
    def _ordered(self) -> "EvalConfig":
        if self.relaxed_threshold < self.strict_threshold:
            raise ValueError("relaxed_threshold must be >= strict_threshold")
        return self


class TrainConfig(_Strict):
    """One training run: the paper's two-phase protocol (CE then MSE on one-hot targets)."""

    seed: int = 0
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default leaves torch's")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    ce_epochs: int = Field(200, ge=0)
    mse_epochs: int = Field(400, ge=0)
    batch_size: int = Field(128, gt=0)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    intervention_alpha: float | None = Field(
        None, gt=0, description="scale the last hidden Linear by alpha at the phase switch"
    )

    @model_validator(mode="after")
    def _some_epochs(self) -> "TrainConfig":
        if self.ce_epochs + self.mse_epochs <= 0:
            raise ValueError("ce_epochs + mse_epochs must be positive")
        return self

    @property
    def total_epochs(self) -> int:
        return self.ce_epochs + self.mse_epochs


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see README for the allowed keys)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives one key twice (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node.start_mark:
                    a, b = first.line + 1, key_node.start_mark.line + 1
                    where = f"lines {a} and {b}" if a != b else f"twice on line {a}"
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} ({where}); keep one of them", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML ``text`` (from ``source``, named in errors) as ncstudy reads every YAML file:
    safe types only, a duplicate key refused with both line numbers."""
    try:
        loader = _UniqueKeyLoader(text)
        loader.name = source  # marks in errors name the file, not "<unicode string>"
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a configuration") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found" if not p.exists() else f"{p}: not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the file as UTF-8 YAML") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror})") from None
    data = load_yaml_text(text, str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_train_config(path: str | Path) -> TrainConfig:
    """A trainer config file. An empty file is refused (a typo'd path or an unsaved editor buffer
    would otherwise start the paper's full 600-epoch run); ``{}`` asks for the defaults explicitly."""
    p = Path(path)
    data = read_yaml(p)
    if not data and p.read_text(encoding="utf-8").strip() != "{}":
        raise ConfigError(f"{p}: empty configuration; write the keys to change (see configs/quickstart_train.yaml), "
                          f"or `{{}}` to run the defaults (MLP-5 w512 on mnist5k, 200 CE + 400 MSE epochs)")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys (the search-space and MLflow-param vocabulary)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"{dotted}: '{p}' is not a section")
    cur[parts[-1]] = value
