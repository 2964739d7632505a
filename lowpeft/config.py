# Adapter configurations for lowpeft.apply: LoRAConfig, AdapterConfig (bottleneck adapters) and
# PromptTuningConfig, plus their translation to and from PEFT's adapter_config.json.
#
# Trade-off: plain frozen dataclasses validated in __post_init__ (bad values fail at construction with a
# message naming the field, not deep inside apply), and only the fields lowpeft implements; a PEFT config
# using a feature lowpeft lacks (rank_pattern, DoRA, layers_to_transform, ...) is refused by name when
# loaded rather than silently ignored.
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

__all__ = [
    "LoRAConfig",
    "AdapterConfig",
    "PromptTuningConfig",
    "BOTTLENECK_PEFT_TYPE",
    "config_from_peft_dict",
    "adapter_dtype_name",
]

BOTTLENECK_PEFT_TYPE = "LOWPEFT_BOTTLENECK_ADAPTER"
ALL_LINEAR = "all-linear"
_BIAS_MODES = ("none", "all", "lora_only")
_LORA_INITS = ("default", "gaussian")
_ADAPTER_DTYPES = (None, "float32", "bfloat16", "float16", "float64")
_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
_PROMPT_INITS = ("random", "text", "sample_vocab")

TargetModules = Union[str, Sequence[str]]


def _check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def _check_number(name: str, value: Any) -> None:
    """A wrong type is a TypeError, a non-finite number a ValueError (as across lowpeft)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a finite number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _normalise_targets(name: str, value: Any, required: bool = True) -> Optional[TargetModules]:
    """A regex stays a string, "all-linear" in any case becomes "all-linear"; any other collection of names becomes
    a sorted tuple."""
    if value is None and not required:
        return None
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{name}: expected a non-empty regex, module name list or 'all-linear', got ''")
        return ALL_LINEAR if value.lower() == ALL_LINEAR else value  # any case, as PEFT reads it
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        if not value or not all(value):
            raise ValueError(f"{name}: expected a non-empty list of non-empty module names, got {value!r}")
        return tuple(sorted(set(value)))
    raise TypeError(
        f"{name}: expected a list of module names (or name suffixes), a regex string or 'all-linear', got {value!r}"
    )


def adapter_dtype_name(value):
    """An adapter_dtype as its name: a torch.dtype (torch.float32) becomes "float32"; anything else is returned as it
    came, for the caller's checks. Recognised by type so that this module does not import torch."""
    if type(value).__name__ == "dtype" and type(value).__module__ == "torch":
        return str(value).removeprefix("torch.")
    return value


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA on every targeted nn.Linear / transformers Conv1D: W x + b + scaling · B A dropout(x).

    target_modules: a list of module names or name suffixes ("q_proj" matches "model.layers.0.self_attn.q_proj"),
    a regex string matched against the whole module name, or "all-linear" (every Linear / Conv1D except the
    output head); the same rule as PEFT. exclude_modules uses the same rule to drop matches.
    bias: "none", "all" (every bias in the model trains) or "lora_only" (the biases of targeted layers train).
    init: "default" (Kaiming-uniform A, zero B, as PEFT) or "gaussian" (A ~ N(0, 1/r)).
    adapter_dtype: the dtype of lora_A / lora_B, as a torch.dtype or by name (torch.float32 or "float32", ...; kept
    as the name); None (the default) keeps the base weight's. PEFT keeps them in float32 on a 16-bit base (its
    autocast_adapter_dtype): "float32" does the same, so small optimizer updates are not rounded away in bf16. Like
    backend, not part of the saved file.
    """

    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    target_modules: TargetModules = ALL_LINEAR
    use_rslora: bool = False
    bias: str = "none"
    init: str = "default"
    exclude_modules: Optional[TargetModules] = None
    task_type: Optional[str] = None
    backend: str = "auto"
    adapter_dtype: Optional[str] = None

    def __post_init__(self):
        _check_int("r", self.r)
        _check_number("alpha", self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise TypeError(f"dropout: expected a float in [0, 1), got {type(self.dropout).__name__} {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "target_modules", _normalise_targets("target_modules", self.target_modules))
        object.__setattr__(self, "exclude_modules", _normalise_targets("exclude_modules", self.exclude_modules, False))
        if not isinstance(self.use_rslora, bool):
            raise TypeError(f"use_rslora: expected a bool, got {self.use_rslora!r}")
        _check_choice("bias", self.bias, _BIAS_MODES)
        _check_choice("init", self.init, _LORA_INITS)
        object.__setattr__(self, "adapter_dtype", adapter_dtype_name(self.adapter_dtype))
        if self.adapter_dtype is not None and not isinstance(self.adapter_dtype, str):
            raise TypeError(f"adapter_dtype: expected None, a torch.dtype or a dtype name such as 'float32', got "
                            f"{type(self.adapter_dtype).__name__} {self.adapter_dtype!r}")
        _check_choice("adapter_dtype", self.adapter_dtype, _ADAPTER_DTYPES)
        if self.task_type is not None and not isinstance(self.task_type, str):
            raise TypeError(f"task_type: expected None or a PEFT task type string, got {self.task_type!r}")
        from .ops._dispatch import _check_name

        _check_name(self.backend)

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


@dataclass(frozen=True)
class AdapterConfig:
    """A bottleneck adapter (Houlsby placement) after every targeted nn.Linear:
    out = y + scale · up(act(down(y))), with `bottleneck` hidden units. target_modules follows LoRAConfig's rule."""

    bottleneck: int = 64
    target_modules: TargetModules = ALL_LINEAR
    activation: str = "gelu"
    scale: float = 1.0
    exclude_modules: Optional[TargetModules] = None
    backend: str = "auto"

    def __post_init__(self):
        _check_int("bottleneck", self.bottleneck)
        object.__setattr__(self, "target_modules", _normalise_targets("target_modules", self.target_modules))
        object.__setattr__(self, "exclude_modules", _normalise_targets("exclude_modules", self.exclude_modules, False))
        _check_choice("activation", self.activation, _ACTIVATIONS)
        _check_number("scale", self.scale)
        from .ops._dispatch import _check_name

        _check_name(self.backend)


@dataclass(frozen=True)
class PromptTuningConfig:
    """Prompt tuning (Lester et al.): `num_virtual_tokens` trainable embeddings prepended to inputs_embeds, with
    attention_mask and labels extended as PEFT does; everything else frozen.

    init: "random" (N(0, 1), as nn.Embedding and PEFT), "text" (the input embeddings of `init_token_ids`, the
    token ids of a text, repeated or cut to num_virtual_tokens, as PEFT's TEXT init) or "sample_vocab"
    (embeddings of token ids drawn uniformly from the vocabulary, with torch's generator); any case (PEFT's
    RANDOM / TEXT / SAMPLE_VOCAB), stored lower-case.
    """

    num_virtual_tokens: int = 20
    init: str = "random"
    init_token_ids: Optional[Sequence[int]] = None
    task_type: str = "CAUSAL_LM"

    def __post_init__(self):
        _check_int("num_virtual_tokens", self.num_virtual_tokens)
        if isinstance(self.init, str):  # any case: PEFT spells them RANDOM, TEXT, SAMPLE_VOCAB
            object.__setattr__(self, "init", self.init.lower())
        _check_choice("init", self.init, _PROMPT_INITS)
        if self.init == "text":
            ids = self.init_token_ids
            if ids is None or isinstance(ids, (str, bytes)) or not len(ids):
                raise ValueError(
                    "init_token_ids: init='text' needs the token ids of the text (e.g. tokenizer(text)['input_ids']), "
                    f"got {ids!r}"
                )
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
                raise TypeError(f"init_token_ids: expected non-negative ints, got {list(ids)!r}")
            object.__setattr__(self, "init_token_ids", tuple(ids))
        elif self.init_token_ids is not None:
            raise ValueError(f"init_token_ids: only used with init='text', got init={self.init!r}")
        if self.task_type != "CAUSAL_LM":
            raise ValueError(f"task_type: lowpeft's prompt tuning supports 'CAUSAL_LM', got {self.task_type!r}")


# ------------------------------------------------------------------------------------------------------
# adapter_config.json translation
# ------------------------------------------------------------------------------------------------------
def _targets_to_json(targets: Optional[TargetModules]):
    return targets if targets is None or isinstance(targets, str) else list(targets)


def lora_peft_dict(config: LoRAConfig, target_modules: TargetModules, fan_in_fan_out: bool,
                   base_model_name_or_path: Optional[str]) -> dict:
    """PEFT 0.21's adapter_config.json for a lowpeft LoRA adapter (fields PEFT needs, defaults for the rest)."""
    return {
        "peft_type": "LORA",
        "task_type": config.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": _targets_to_json(target_modules),
        "exclude_modules": _targets_to_json(config.exclude_modules),
        "bias": config.bias,
        "use_rslora": config.use_rslora,
        "fan_in_fan_out": fan_in_fan_out,
        "init_lora_weights": True if config.init == "default" else "gaussian",
        "inference_mode": True,
        "modules_to_save": None,
        "use_dora": False,
        "lora_bias": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }


def adapter_peft_dict(config: AdapterConfig, target_modules: TargetModules,
                      base_model_name_or_path: Optional[str]) -> dict:
    """lowpeft's own adapter_config.json for bottleneck adapters (peft_type LOWPEFT_BOTTLENECK_ADAPTER)."""
    return {
        "peft_type": BOTTLENECK_PEFT_TYPE,
        "base_model_name_or_path": base_model_name_or_path,
        "bottleneck": config.bottleneck,
        "target_modules": _targets_to_json(target_modules),
        "exclude_modules": _targets_to_json(config.exclude_modules),
        "activation": config.activation,
        "scale": config.scale,
        "library": "lowpeft",
    }


def prompt_peft_dict(config: PromptTuningConfig, token_dim: int, num_layers: Optional[int],
                     num_attention_heads: Optional[int], base_model_name_or_path: Optional[str]) -> dict:
    """PEFT's PROMPT_TUNING adapter_config.json. prompt_tuning_init is written as RANDOM whatever the init was:
    the saved embeddings are the prompt, and PEFT's TEXT init would need a tokenizer download to load them."""
    return {
        "peft_type": "PROMPT_TUNING",
        "task_type": config.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "num_virtual_tokens": config.num_virtual_tokens,
        "token_dim": token_dim,
        "num_transformer_submodules": 1,
        "num_attention_heads": num_attention_heads,
        "num_layers": num_layers,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
        "inference_mode": True,
        "modules_to_save": None,
        "revision": None,
    }


# Fields of a PEFT LoRA config that lowpeft implements only at their default value.
_LORA_UNSUPPORTED_DEFAULTS = {
    "use_dora": (False, None),
    "lora_bias": (False, None),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None, []),
    "layers_pattern": (None, [], ""),
    "modules_to_save": (None, []),
    "layer_replication": (None,),
    "trainable_token_indices": (None,),
    "target_parameters": (None, []),
    "use_qalora": (False, None),
    "alora_invocation_tokens": (None,),
    "arrow_config": (None,),
    "use_bdlora": (None, False),
    "velora_config": (None,),
    "monteclora_config": (None,),
    "kasa_config": (None,),
}


def config_from_peft_dict(data: dict, source: str = "adapter_config.json"):
    """The lowpeft config for an adapter_config.json written by PEFT or by lowpeft; a feature lowpeft does not
    implement is a ValueError naming the field and its value."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    peft_type = data.get("peft_type")
    if peft_type == "LORA":
        for name, defaults in _LORA_UNSUPPORTED_DEFAULTS.items():
            if name in data and data[name] not in defaults:
                raise ValueError(
                    f"{source}: field {name}={data[name]!r} is a PEFT LoRA feature lowpeft does not implement "
                    f"(supported: {defaults[0]!r})"
                )
        init = data.get("init_lora_weights", True)
        if init not in (True, "gaussian"):
            raise ValueError(
                f"{source}: init_lora_weights={init!r} is not supported by lowpeft (expected true or 'gaussian')"
            )
        if data.get("target_modules") is None:
            raise ValueError(f"{source}: target_modules is missing or null; lowpeft needs the targeted module names")
        return LoRAConfig(
            r=data.get("r", 8),
            alpha=data.get("lora_alpha", 8),
            dropout=data.get("lora_dropout", 0.0),
            target_modules=data["target_modules"],
            exclude_modules=data.get("exclude_modules"),
            use_rslora=bool(data.get("use_rslora", False)),
            bias=data.get("bias", "none"),
            init="default" if init is True else "gaussian",
            task_type=data.get("task_type"),
        )
    if peft_type == BOTTLENECK_PEFT_TYPE:
        return AdapterConfig(
            bottleneck=data["bottleneck"],
            target_modules=data["target_modules"],
            exclude_modules=data.get("exclude_modules"),
            activation=data.get("activation", "gelu"),
            scale=data.get("scale", 1.0),
        )
    if peft_type == "PROMPT_TUNING":
        if data.get("num_transformer_submodules", 1) != 1:
            raise ValueError(
                f"{source}: num_transformer_submodules={data['num_transformer_submodules']} (encoder-decoder prompt "
                "tuning) is not supported by lowpeft; expected 1 (decoder-only, CAUSAL_LM)"
            )
        return PromptTuningConfig(num_virtual_tokens=data["num_virtual_tokens"],
                                  task_type=data.get("task_type") or "CAUSAL_LM")
    raise ValueError(
        f"{source}: peft_type {peft_type!r} is not supported by lowpeft; expected 'LORA', 'PROMPT_TUNING' or "
        f"{BOTTLENECK_PEFT_TYPE!r}"
    )
