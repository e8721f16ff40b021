"""The configs: the seven provenance configs and the base model in conf/data/, every data and experiment
file composes on the typed schema, the defaults, and a misspelled key, a wrong type or an unknown choice
fails when the config is composed (in-process and through the CLI), before anything runs."""

import shutil

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from conftest import CONF, cli, compose_cfg

DATA_CONFIGS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


PROVENANCE_CONFIGS = [name for name in DATA_CONFIGS if name != "base"]


def test_the_seven_provenance_configs_and_the_base_model_are_in_conf_data():
    assert DATA_CONFIGS == sorted(
        ["base", "native", "synthetic", "translated", "native+synthetic", "native+translated", "synthetic+translated", "native+synthetic+translated"]
    )


def test_the_base_model_config_has_no_training_source():
    cfg = compose_cfg("data=base")
    assert cfg.data.name == "base" and not cfg.data.sources


@pytest.mark.parametrize("name", PROVENANCE_CONFIGS)
def test_every_data_config_composes_with_the_sources_its_name_lists(name):
    cfg = compose_cfg(f"data={name}")
    assert cfg.data.name == name
    assert sorted(cfg.data.sources) == sorted(name.split("+"))
    for source_name, source in cfg.data.sources.items():
        assert source.origin.value == source_name
        assert source.files and all(isinstance(p, str) for p in source.files)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = compose_cfg(f"experiment={name}")
    assert cfg.model.name and cfg.adapter.name and cfg.data.sources


def test_defaults_are_tiny_qlora_bundled_sample_wandb_offline(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_cfg()
    assert cfg.model.name == "tiny-qwen3" and cfg.model.build_tiny is not None
    assert cfg.adapter.quantization.value == "nf4" and cfg.adapter.double_quant
    assert (cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.dropout) == (16, 16, 0.05)
    assert list(cfg.adapter.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert cfg.logger.wandb._target_ == "lightning.pytorch.loggers.WandbLogger" and cfg.logger.wandb.mode == "offline"
    assert cfg.data.sources.native.files[0].endswith("sample_data/native/train")


def test_the_real_model_preset_points_at_the_hub_model():
    cfg = compose_cfg("model=qwen3_4b_instruct", "adapter=qlora")
    assert cfg.model.path == "Qwen/Qwen3-4B-Instruct-2507"
    assert cfg.model.dtype == "bfloat16" and cfg.adapter.compute_dtype == "bfloat16"
    assert cfg.model.build_tiny is None


def test_misspelled_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("trainer.max_stepz=3")
    assert isinstance(err.value.__cause__, (ConfigKeyError, ConfigAttributeError))
    assert "Key 'max_stepz' not in 'TrainerConfig'" in str(err.value.__cause__)


def test_misspelled_key_in_a_config_file_fails_at_compose_time(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "adapter" / "typo.yaml").write_text("name: typo\nmethod: lora\nrank: 8\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises(ConfigCompositionException) as err:
            compose("train", overrides=["adapter=typo"])
    assert "In 'adapter/typo'" in str(err.value) and "Key 'rank' not in 'AdapterConfig'" in str(err.value)


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("trainer.max_steps=many")
    assert isinstance(err.value.__cause__, ValidationError)


def test_unknown_enum_value_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException):
        compose_cfg("adapter.quantization=int3")


def test_cli_prints_the_composed_config():
    result = cli("train.py", "--cfg", "job", "data=native+translated")
    assert result.returncode == 0, result.stderr
    assert "name: native+translated" in result.stdout
    assert "quantization: nf4" in result.stdout


def test_cli_unknown_data_config_lists_the_valid_options():
    result = cli("train.py", "data=nope")
    assert result.returncode != 0
    assert "Could not find 'data/nope'" in result.stderr
    for name in DATA_CONFIGS:
        assert f"\t{name}\n" in result.stderr


def test_cli_misspelled_key_fails_before_running():
    result = cli("train.py", "trainer.max_stepz=3")
    assert result.returncode != 0
    assert "Key 'max_stepz' not in 'TrainerConfig'" in result.stderr


def test_every_range_is_a_field_of_the_schema_and_refuses_a_value_outside_it():
    """The ranges are metadata of the schema's fields (config/schema.py): each names a key the
    composed config has, holds its default, and refuses in one line naming the key."""
    from dataclasses import make_dataclass

    from omegaconf import OmegaConf

    from medinject.config import check_settings, ranged_keys, setting
    from medinject.config.fields import AT_LEAST_ONE, schema_fields
    from medinject.util.errors import UserError

    cfg = compose_cfg("experiment=smoke")
    keys = dict(ranged_keys())
    assert {"optim.lr", "trainer.batch_size", "eval.limit", "data.contamination.threshold", "plan.tokens_per_second"} <= set(keys)
    for key, allowed in keys.items():
        missing = object()
        value = OmegaConf.select(cfg, key, default=missing)
        assert value is not missing, key
        assert allowed.test(value), (key, value)
    broken = cfg.copy()
    broken.eval.length_bins = 0
    with pytest.raises(UserError, match=r"^eval\.length_bins: 0 is out of range; allowed: an integer >= 1$"):
        check_settings(broken)
    # a field renamed in a schema takes its range along: the walk finds it under the new name
    renamed = make_dataclass("Renamed", [("bins_per_answer", int, setting(4, allowed=AT_LEAST_ONE))])
    assert [(name, f.metadata["allowed"]) for name, f, _ in schema_fields(renamed)] == [("bins_per_answer", AT_LEAST_ONE)]


def test_importing_the_config_package_registers_nothing_register_does():
    code = ("from hydra.core.config_store import ConfigStore; from omegaconf import OmegaConf; import medinject.config as c; "
            "before = ('run_schema.yaml' in ConfigStore.instance().repo, OmegaConf.has_resolver('medinject.run_name')); "
            "c.register(); c.register(); "
            "print(before, ('run_schema.yaml' in ConfigStore.instance().repo, OmegaConf.has_resolver('medinject.run_name')))")
    out = cli("-c", code, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(False, False) (True, True)"
