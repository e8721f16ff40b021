"""The enumerations of the schema: every choice a config value makes among fixed names.

A member renamed after runs recorded it keeps its old name as an accepted alias (`_AcceptsOldNames`):
OmegaConf looks a config value up by name (`Enum["old"]`), which then gives the new member and logs
one deprecation line per old name; the run identity hashes the value under its old name
(`renamed_values`), so a run keeps its directory across the rename.
"""

from __future__ import annotations

import logging
from enum import Enum, EnumMeta


class Origin(str, Enum):
    native = "native"
    synthetic = "synthetic"
    translated = "translated"


class TaskType(str, Enum):
    mcqu = "mcqu"  # multiple choice, exactly one correct option
    mcq = "mcq"  # multiple choice, several correct options ("A, C")
    oeq = "oeq"  # open-ended question


class MixStrategy(str, Enum):
    natural = "natural"
    equal_budget = "equal_budget"
    weighted = "weighted"


class TaskBalance(str, Enum):
    source = "source"  # per-task proportions follow the source's own
    balanced = "balanced"  # each source's share is split equally across its task types


class SourceFormat(str, Enum):
    auto = "auto"  # the MedInjection-FR download under paths.medinjection when set, else `files`
    jsonl = "jsonl"  # JSON Lines files (or directories of *.jsonl), `columns` maps their names
    parquet = "parquet"  # parquet files (or directories of *.parquet), `columns` maps their names
    medinjection_all = "medinjection_all"  # <root>/ALL: parquet splits, the `origin` column selects
    medinjection_source = "medinjection_source"  # <root>/<subset>/{Train,Validation,Test}/{mcq,mcqu,oeq}/*.json
    chat_json = "chat_json"  # JSON lists of {messages, classes, answer} evaluation items
    hub = "hub"  # datasets.load_dataset(hub_id, hub_config, split=split), for users who are online


class OnBadRow(str, Enum):
    error = "error"  # stop at the first bad row, naming file, row and field
    skip = "skip"  # drop bad rows; the manifest counts them by reason


class Overlong(str, Enum):
    truncate = "truncate"  # cut the answer at max_length (an example whose prompt fills it is dropped)
    drop = "drop"  # leave out every example longer than max_length


class Duplicates(str, Enum):
    drop = "drop"  # keep the first of identical training rows (within or across sources), count the rest
    keep = "keep"  # train on every copy (counted all the same)
    error = "error"  # stop at the first duplicate, naming both rows


class Batching(str, Enum):
    padding_free = "padding_free"  # a batch's examples concatenated into one row, positions restarting
    padded = "padded"  # right-padded to the longest example of the batch


class AdapterMethod(str, Enum):
    lora = "lora"
    dora = "dora"


class Quantization(str, Enum):
    nf4 = "nf4"
    fp4 = "fp4"


class _AcceptsOldNames(EnumMeta):
    """An enum whose members were renamed: `Enum["old"]` (how OmegaConf reads a config value or an
    override) and `Enum("old")` still give the member, with one deprecation line per old name."""

    def __getitem__(cls, name):
        return super().__getitem__(_current_name(cls, name))


_RENAMED: dict[type, tuple[str, dict[str, str]]] = {}  # enum -> (its config key, {old name: new name})
_warned: set[tuple[str, str]] = set()


def _current_name(enum: type, name):
    key, renamed = _RENAMED.get(enum, ("", {}))
    if isinstance(name, str) and name in renamed:
        if (key, name) not in _warned:
            _warned.add((key, name))
            logging.getLogger(__name__).warning("%s=%s is deprecated: it is now %s=%s", key, name, key, renamed[name])
        return renamed[name]
    return name


class EvalProtocol(str, Enum, metaclass=_AcceptsOldNames):
    """Named by what they do; each is a class of medinject.eval.protocols."""

    lenient = "lenient"  # this project's: system prompt + task hint, letter grammar, lenient letter reading (was `medinject`)
    strict = "strict"  # the study's released evaluation: the item's own messages, fixed budgets, strict letters (was `released`)

    @classmethod
    def _missing_(cls, value):
        name = _current_name(cls, value)
        return cls.__members__.get(name) if name != value else None

    @classmethod
    def current(cls, name: str) -> str:
        """The current name of a protocol as a run recorded it (runs before the rename wrote the old
        one), without the deprecation line: reading an old run is not using an old name."""
        return _RENAMED[cls][1].get(name, name)


_RENAMED[EvalProtocol] = ("eval.protocol", {"medinject": "lenient", "released": "strict"})


class JudgeRubric(str, Enum):
    medinject = "medinject"  # eval.judge.medinject_rubric: French, one user turn, a few new tokens
    released = "released"  # the study's released judge: English system prompt, 1 new token, \b[01]\b


class EvalBackend(str, Enum):
    hf = "hf"  # transformers' generate (and medinject's shared-prefill multiple-choice decoding)
    vllm = "vllm"  # a vLLM engine (the `vllm` extra), same prompts, allowed tokens and letter rule


class JudgeBackend(str, Enum):
    none = "none"
    local = "local"  # a transformers model (local folder or hub id), batched greedy generation
    openai = "openai"  # an OpenAI-compatible chat-completions endpoint


def renamed_values() -> list[tuple[str, dict[str, str]]]:
    """(config key, {new name: old name}) of every renamed enum value."""
    return [(key, {new: old for old, new in renamed.items()}) for key, renamed in _RENAMED.values()]
