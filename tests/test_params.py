"""Params: every file loads; every mistake is reported with file, key, value and the fix."""
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from polo_lib import params, paths
from polo_lib.errors import ParamsError

PARAMS_FILES = sorted(p.stem for p in paths.PARAMS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", PARAMS_FILES)
def test_every_params_file_loads_and_round_trips(name, tmp_path):
    cfg = params.load(name)
    assert cfg.name == name
    saved = params.save(cfg, tmp_path / "params.yaml")
    assert params.load_resolved(saved) == cfg


def test_the_profiles_exist():
    assert {"default", "cpu", "smoke"} <= set(PARAMS_FILES)


def test_default_is_the_seed_recipe():
    cfg = params.load("default")
    assert cfg.model.model_name == "unsloth/Llama-3.2-3B-Instruct-bnb-4bit" and cfg.model.load_in_4bit
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (16, 32, 0.05)
    assert cfg.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    t = cfg.training
    assert (t.num_train_epochs, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (5, 1, 4)
    assert (t.learning_rate, cfg.model.max_seq_length, t.seed) == (2e-4, 1024, 3407)
    assert (t.early_stopping_patience, t.early_stopping_threshold) == (3, 0.001)
    assert (t.eval_steps, t.save_steps) == ("epoch", "epoch")
    assert cfg.model.require_gpu and cfg.model.load_in_4bit


def write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def test_typo_in_file_names_file_key_and_the_right_key(tmp_path):
    path = write(tmp_path, {"model": {"model_name": "tiny-llama"}, "training": {"learnig_rate": 1e-4}})
    with pytest.raises(ParamsError) as e:
        params.load(path)
    msg = str(e.value)
    assert str(path) in msg and "training.learnig_rate" in msg and "Did you mean 'learning_rate'" in msg


def test_unknown_section_is_named_with_suggestion(tmp_path):
    path = write(tmp_path, {"model": {"model_name": "x/y"}, "trainng": {}})
    with pytest.raises(ParamsError, match=r"unknown key 'trainng'.*Did you mean 'training'"):
        params.load(path)


@pytest.mark.parametrize("key,value,allowed", [
    ("training.learning_rate", 0, "greater than 0"),
    ("training.learning_rate", -1e-4, "greater than 0"),
    ("lora.r", 0, "greater than or equal to 1"),
    ("lora.lora_dropout", 1.0, "less than 1"),
    ("lora.lora_dropout", -0.1, "greater than or equal to 0"),
    ("training.num_train_epochs", 0, "greater than 0"),
    ("training.per_device_train_batch_size", 0, "greater than or equal to 1"),
    ("training.gradient_accumulation_steps", 0, "greater than or equal to 1"),
    ("model.max_seq_length", 8, "greater than or equal to 16"),
    ("training.lr_scheduler_type", "cosine_annealing", "'linear'"),
    ("data.over_length", "truncate", "'fail' or 'drop'"),
])
def test_out_of_range_values_name_key_value_and_range(key, value, allowed):
    with pytest.raises(ParamsError) as e:
        params.load("smoke", overrides={key: value})
    msg = str(e.value)
    assert f"'{key}' = {value!r}" in msg and allowed in msg


@pytest.mark.parametrize("key,value", [
    ("training.per_device_train_batch_size", "four"),
    ("training.learning_rate", "fast"),
    ("model.load_in_4bit", "maybe"),
    ("lora.target_modules", 7),
])
def test_wrong_types_are_rejected(key, value):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        params.load("smoke", overrides={key: value})


def test_all_problems_are_reported_at_once(tmp_path):
    path = write(tmp_path, {"model": {"model_name": "tiny-llama", "max_seq_lenght": 10},
                            "lora": {"r": 0}, "training": {"learning_rate": -1}})
    with pytest.raises(ParamsError) as e:
        params.load(path)
    msg = str(e.value)
    assert msg.startswith("3 problem(s)")
    assert "max_seq_lenght" in msg and "'lora.r' = 0" in msg and "'training.learning_rate' = -1" in msg


def test_missing_file_lists_the_available_ones():
    with pytest.raises(ParamsError, match=r"'cpuu' not found. Did you mean 'cpu'\?.*default"):
        params.load("cpuu")


def test_invalid_yaml_is_a_params_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="not valid YAML"):
        params.load(path)


def test_early_stopping_needs_equal_eval_and_save_steps():
    with pytest.raises(ParamsError, match="save_steps .* must equal eval_steps"):
        params.load("smoke", overrides={"training.save_steps": 4, "training.eval_steps": 3,
                                        "early_stopping_patience": 2})
    cfg = params.load("smoke", overrides={"save_steps": 4, "early_stopping_patience": 0})
    assert cfg.training.save_steps == 4


def test_overrides_by_short_name_alias_and_dotted_key():
    cfg = params.load("cpu", epochs=5, learning_rate=None, lora_r=8, overrides={"evaluation.limit": 3})
    assert cfg.training.num_train_epochs == 5
    assert cfg.training.learning_rate == params.load("cpu").training.learning_rate  # None keeps the file's
    assert cfg.lora.r == 8 and cfg.evaluation.limit == 3


def test_unknown_override_suggests_the_knob():
    with pytest.raises(ParamsError, match=r"unknown override 'epoch'. Did you mean 'epochs'"):
        params.load("cpu", epoch=3)


def test_params_are_frozen():
    cfg = params.load("smoke")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.training.learning_rate = 1.0


def test_hash_depends_on_values_not_on_the_file_name():
    a, b = params.load("cpu"), params.load("cpu", epochs=3)
    assert a.short_hash() == params.load("cpu").short_hash()
    assert a.short_hash() != b.short_hash()


def test_from_notebook_rejects_a_typod_papermill_parameter():
    """papermill injects `-p epoch 5` with only a warning; the notebook must stop instead."""
    namespace = {"params_file": "smoke", "run_id": None, "epochs": None, "epoch": 5,
                 "__name__": "__main__", "In": [], "params": params}
    with pytest.raises(ParamsError, match=r"unknown notebook parameter 'epoch' = 5. Did you mean 'epochs'"):
        params.from_notebook(namespace)


COLAB_CELL = 'REPO_URL = "x"\nimport os, sys\nif "google.colab" in sys.modules:\n    pass\n'
PARAMETERS_CELL = 'params_file = "smoke"\nrun_id = None\nepochs = None\nmax_steps = 2\n'
RESOLVE_CELL = "cfg = params.from_notebook(globals())\n"


class DatasetDict(dict):
    """What `dataset = data.load_or_prepare(cfg)` leaves in the kernel: a dict, so it looked plain."""


def test_a_second_run_all_in_one_kernel_takes_only_the_parameters_cell():
    """Run All twice: the kernel then holds the first run's results (dataset, a plain-looking
    dict; n, a number) beside the parameters; only the parameters cell's names are parameters."""
    history = ["", COLAB_CELL, PARAMETERS_CELL, RESOLVE_CELL, "dataset = data.load_or_prepare(cfg)\nn = 3\n",
               COLAB_CELL, PARAMETERS_CELL.replace("max_steps = 2", "max_steps = 4"), RESOLVE_CELL]
    namespace = {"In": history, "REPO_URL": "x", "params_file": "smoke", "run_id": None, "epochs": None,
                 "max_steps": 4, "dataset": DatasetDict(train=[1]), "n": 3, "params": params}
    assert params.parameter_names(history) == {"params_file", "run_id", "epochs", "max_steps"}
    cfg = params.from_notebook(namespace)
    assert cfg.training.max_steps == 4 and cfg.overridden == ("training.max_steps",)
    with pytest.raises(ParamsError, match="unknown notebook parameter 'dataset'"):  # what it did before
        params.from_notebook({k: v for k, v in namespace.items() if k != "In"})


def test_a_typod_papermill_parameter_is_still_refused_in_a_kernel():
    """papermill injects `-p max_step 6` after the parameters cell as '# Parameters' with a warning
    only; its names are parameters too, so the typo stops the notebook."""
    history = ["", COLAB_CELL, PARAMETERS_CELL, "# Parameters\nmax_step = 6\n", RESOLVE_CELL]
    namespace = {"In": history, "params_file": "smoke", "run_id": None, "epochs": None, "max_steps": 2,
                 "max_step": 6}
    with pytest.raises(ParamsError, match=r"unknown notebook parameter 'max_step' = 6. Did you mean 'max_steps'"):
        params.from_notebook(namespace)
    # `-p params_file smoke -p epochs 2`: the injected cell sets params_file too, and the parameters
    # cell's own names (max_steps 2) stay parameters beside the injected ones
    history[3] = '# Parameters\nparams_file = "smoke"\nepochs = 2\n'
    cfg = params.from_notebook({**namespace, "epochs": 2})
    assert (cfg.training.max_steps, cfg.training.num_train_epochs) == (2, 2)


def test_from_notebook_applies_the_knobs():
    cfg = params.from_notebook({"params_file": "smoke", "run_id": None, "epochs": 3, "learning_rate": None})
    assert cfg.training.num_train_epochs == 3 and cfg.name == "smoke"


@pytest.mark.parametrize("path", sorted((paths.PARAMS_DIR / "queues").glob("*.yaml")), ids=lambda p: p.name)
def test_every_queue_file_and_its_variants_validate(path):
    from polo_lib import queues

    q = queues.load(path)
    for item in q.items:
        params.load(q.base, overrides={**q.common, **item.overrides})


def test_the_hash_leaves_out_what_is_about_the_file_not_the_experiment():
    """Renaming a params file (or choosing it by 'auto') keeps the hash; changing a value does not."""
    cfg = params.load("smoke")
    renamed = cfg.model_copy(update={"name": "other", "source": "elsewhere.yaml", "chosen_by": "auto"})
    assert renamed.short_hash() == cfg.short_hash()
    assert params.load("smoke", learning_rate=1e-3).short_hash() != cfg.short_hash()
