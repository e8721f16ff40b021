"""The shape of a Qwen3 decoder, from its config, and the parameters an adapter adds to it: what the
memory estimate (`medinject.sweep.estimate`) counts bytes of. Exact: the counts are checked against
transformers and peft on the meta device (tests/test_estimate.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Architecture:
    """The shape of a Qwen3 decoder-only model: all that the estimate needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    attention_bias: bool = False

    @classmethod
    def from_config(cls, config: Any) -> Architecture:
        """From a transformers `Qwen3Config` or any object (or dict) with the same attributes."""
        get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
        heads = int(get("num_attention_heads"))
        return cls(
            vocab_size=int(get("vocab_size")),
            hidden_size=int(get("hidden_size")),
            intermediate_size=int(get("intermediate_size")),
            num_hidden_layers=int(get("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(get("head_dim") or int(get("hidden_size")) // heads),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            attention_bias=bool(get("attention_bias", False)),
        )

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def linear_parameters(self, name: str) -> int:
        """Weight (and bias) values of one projection of one layer."""
        fan_in, fan_out = self.linear_shapes()[name]
        bias = fan_out if self.attention_bias and name in ("q_proj", "k_proj", "v_proj", "o_proj") else 0
        return fan_in * fan_out + bias

    def parameter_counts(self) -> ParameterCounts:
        """Exact parameter counts by module type, over the whole model."""
        layers, h = self.num_hidden_layers, self.hidden_size
        by_module = {"embed_tokens": self.vocab_size * h}
        for name in PROJECTIONS:
            by_module[name] = layers * self.linear_parameters(name)
        by_module["q_norm"] = by_module["k_norm"] = layers * self.head_dim  # Qwen3's per-head RMSNorms
        by_module["input_layernorm"] = by_module["post_attention_layernorm"] = layers * h
        by_module["norm"] = h
        by_module["lm_head"] = 0 if self.tie_word_embeddings else self.vocab_size * h
        return ParameterCounts(by_module)


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts keyed by module name (embed_tokens, q_proj, ..., q_norm, norm, lm_head)."""

    by_module: dict[str, int]

    @property
    def embeddings(self) -> int:
        return self.by_module["embed_tokens"]

    @property
    def attention(self) -> int:
        """q, k, v, o projections and the q/k RMSNorms of every layer."""
        return sum(self.by_module[n] for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"))

    @property
    def mlp(self) -> int:
        return sum(self.by_module[n] for n in ("gate_proj", "up_proj", "down_proj"))

    @property
    def norms(self) -> int:
        """The two RMSNorms of every layer and the final one (q/k norms are under `attention`)."""
        return sum(self.by_module[n] for n in ("input_layernorm", "post_attention_layernorm", "norm"))

    @property
    def lm_head(self) -> int:
        """0 when the output projection is tied to the embeddings."""
        return self.by_module["lm_head"]

    @property
    def total(self) -> int:
        return sum(self.by_module.values())

    @property
    def non_embedding(self) -> int:
        return self.total - self.embeddings - self.lm_head

    @property
    def linear(self) -> int:
        """Values in the seven projections: what bitsandbytes quantizes."""
        return sum(self.by_module[n] for n in PROJECTIONS)


# Qwen/Qwen3-4B-Instruct-2507, from its config.json on the hub (the same numbers as Qwen/Qwen3-4B):
# hidden_size 2560, intermediate_size 9728, num_hidden_layers 36, num_attention_heads 32,
# num_key_value_heads 8, head_dim 128, vocab_size 151936, tie_word_embeddings true, attention_bias
# false. transformers' Qwen3Config defaults share vocab_size 151936, head_dim 128 and no attention bias
# (its other defaults describe a larger model). The count this gives, 4,022,468,096 parameters of which
# 3,633,511,936 outside the embeddings, matches the model card's "4.0B, 3.6B non-embedding".
QWEN3_4B_INSTRUCT_2507 = Architecture(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=True,
)


def qwen3_4b_instruct_2507() -> Architecture:
    """The Qwen3-4B-Instruct-2507 shape, without the hub."""
    return QWEN3_4B_INSTRUCT_2507


def resolve_targets(arch: Architecture, target_modules: Iterable[str] | str) -> list[str]:
    """peft-style target names (suffixes such as "q_proj", or "all-linear") -> projection names."""
    if isinstance(target_modules, str):
        target_modules = PROJECTIONS if target_modules == "all-linear" else [target_modules]
    names = [str(t).rsplit(".", 1)[-1] for t in target_modules]
    unknown = sorted(set(names) - set(arch.linear_shapes()) - {LM_HEAD})  # the output layer: see lm_head_adapter
    if unknown:
        raise ValueError(f"target_modules: {unknown} are not projections of a Qwen3 layer ({', '.join(PROJECTIONS)})")
    return [n for n in PROJECTIONS if n in names]


LM_HEAD = "lm_head"


def lm_head_adapter(arch: Architecture, method: str, r: int, target_modules: Iterable[str] | str) -> int:
    """Trainable values of an adapter on the output layer (`lm_head` among the targets; the tiny
    known-answer preset adapts it), 0 when it is not targeted."""
    names = [] if isinstance(target_modules, str) else [str(t).rsplit(".", 1)[-1] for t in target_modules]
    if LM_HEAD not in names:
        return 0
    return r * (arch.hidden_size + arch.vocab_size) + (arch.vocab_size if adapter_method(method) == "dora" else 0)


def adapter_parameters(arch: Architecture, method: str, r: int, target_modules: Iterable[str] | str = PROJECTIONS) -> int:
    """Trainable values: r*(in+out) per targeted linear (lora_A, lora_B), the output layer's included
    when targeted; DoRA adds out magnitudes."""
    method = adapter_method(method)
    shapes = arch.linear_shapes()
    per_layer = 0
    for name in resolve_targets(arch, target_modules):
        fan_in, fan_out = shapes[name]
        per_layer += r * (fan_in + fan_out) + (fan_out if method == "dora" else 0)
    return arch.num_hidden_layers * per_layer + lm_head_adapter(arch, method, r, target_modules)


def architecture_for(model_cfg: Any) -> Architecture:
    """The architecture of a `model` config: the tiny spec, a local folder's config.json, or the
    built-in Qwen3-4B-Instruct-2507 shape for its hub id."""
    spec = config_get(model_cfg, "build_tiny")
    if spec is not None:
        return Architecture.from_config({**as_dict(spec), "tie_word_embeddings": False})  # as tiny.py builds it
    path = str(config_get(model_cfg, "path"))
    config_file = Path(path).expanduser() / "config.json"
    if config_file.is_file():
        return Architecture.from_config(json.loads(config_file.read_text(encoding="utf-8")))
    if path.rstrip("/").lower().endswith("qwen3-4b-instruct-2507"):
        return QWEN3_4B_INSTRUCT_2507
    raise ValueError(f"model.path: no config.json in {path!r} and no built-in shape for it")


def adapter_method(method: Any) -> str:
    """"lora" or "dora", from an enum or a string."""
    value = enum_value(method).lower()
    if value not in ("lora", "dora"):
        raise ValueError(f"method: {method!r} is not lora or dora")
    return value


def enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def config_get(node: Any, key: str, default: Any = None) -> Any:
    if isinstance(node, dict):
        return node.get(key, default)
    try:
        value = node[key] if hasattr(node, "__getitem__") else getattr(node, key)
    except (KeyError, AttributeError, TypeError):
        return default
    return default if value is None and default is not None else value


def as_dict(node: Any) -> dict[str, Any]:
    if isinstance(node, dict):
        return node
    if hasattr(node, "items"):
        return dict(node.items())
    return dict(vars(node))
