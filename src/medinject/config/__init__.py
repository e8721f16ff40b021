"""The run's configuration: the typed schema (`schema`, with its enumerations in `enums` and each
field's metadata in `fields`), the checks a run passes before anything loads (`checks`), the run
identity (`identity`) and the registration with Hydra (`store.register`, which the entry points
call; importing this package registers nothing). The names other modules use are re-exported here.
"""

from medinject.config.checks import LIGHTNING_PRECISIONS, TORCH_FLOAT_DTYPES, check_settings, device_count, ranged_keys
from medinject.config.enums import (
    AdapterMethod,
    Batching,
    Duplicates,
    EvalBackend,
    EvalProtocol,
    JudgeBackend,
    JudgeRubric,
    MixStrategy,
    OnBadRow,
    Origin,
    Overlong,
    Quantization,
    SourceFormat,
    TaskBalance,
    TaskType,
)
from medinject.config.fields import Allowed, setting, unhashed
from medinject.config.identity import RUN_KEY_LENGTH, identity_fields, run_key, run_name, to_container, unhashed_keys
from medinject.config.schema import (
    AdapterConfig,
    ContaminationConfig,
    DataConfig,
    EvalConfig,
    JudgeConfig,
    MixConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    PlanConfig,
    PlantedConfig,
    PromptConfig,
    ReportConfig,
    RunConfig,
    SourceConfig,
    TinyModelSpec,
    TrackingConfig,
    TrainerConfig,
)
from medinject.config.stages import DataSettings, EvalSettings, TrainSettings
from medinject.config.store import conf_dir, register, sample_data_dir

__all__ = [
    "LIGHTNING_PRECISIONS", "TORCH_FLOAT_DTYPES", "check_settings", "device_count", "ranged_keys",
    "AdapterMethod", "Batching", "Duplicates", "EvalBackend", "EvalProtocol", "JudgeBackend", "JudgeRubric", "MixStrategy",
    "OnBadRow", "Origin", "Overlong", "Quantization", "SourceFormat", "TaskBalance", "TaskType",
    "Allowed", "setting", "unhashed",
    "RUN_KEY_LENGTH", "identity_fields", "run_key", "run_name", "to_container", "unhashed_keys",
    "AdapterConfig", "ContaminationConfig", "DataConfig", "EvalConfig", "JudgeConfig", "MixConfig", "ModelConfig", "OptimConfig",
    "PathsConfig", "PlanConfig", "PlantedConfig", "PromptConfig", "ReportConfig", "RunConfig", "SourceConfig", "TinyModelSpec",
    "TrackingConfig", "TrainerConfig",
    "DataSettings", "EvalSettings", "TrainSettings",
    "conf_dir", "register", "sample_data_dir",
]  # fmt: skip
