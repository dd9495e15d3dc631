"""Train flags transformers and peft read only once the model has loaded are checked when the config is read
(lr_scheduler_type, report_to, warmup_steps), and LoRA target modules against the model as soon as it loads: each
a one-line error (exit 2) instead of a traceback after the model load."""

import pytest

from offline_infalign.config import TrainConfig
from offline_infalign.core.errors import InfalignError
from tests.bad_input_helpers import error_line, make_assets, make_build


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_train")
    assets = make_assets(root)
    return {**assets, "build": make_build(assets, root / "b")}


def train_argv(setup, out, *extra) -> list[str]:
    return ["train", "--dataset", str(setup["build"] / "prepared"), "--model", setup["lm"], "--loss",
            "tilted_pairwise", "--max-steps", "1", "--logging-steps", "1", "--out", str(out), *extra]


def config(**kw) -> TrainConfig:
    return TrainConfig(dataset="d", model="m", loss="tilted_pairwise", out="o", **kw)


USABLE = "allowed: linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt"


@pytest.mark.parametrize("name, why", [
    ("bogus", "is not a transformers scheduler"),
    ("cosine_with_min_lr", "needs settings train does not pass (lr_scheduler_kwargs)"),
    ("reduce_lr_on_plateau", "steps on an evaluation metric, and train evaluates nothing"),
    ("greedy", "steps on an evaluation metric, and train evaluates nothing"),
])
def test_schedulers_train_cannot_run(name, why):
    with pytest.raises(InfalignError) as err:
        config(lr_scheduler_type=name)
    assert str(err.value).startswith(f"train: lr_scheduler_type {name!r} {why}; allowed: linear, cosine,")


def test_every_scheduler_offered_runs():
    """The list the message offers is exactly what builds and steps without a metric (tried, not assumed)."""
    import torch
    from transformers import get_scheduler

    with pytest.raises(InfalignError) as err:
        config(lr_scheduler_type="bogus")
    offered = str(err.value).split("allowed: ")[1].split(", ")
    assert offered == USABLE.removeprefix("allowed: ").split(", ")
    for name in offered:
        config(lr_scheduler_type=name)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=3)
        optimizer.step()
        scheduler.step()


def test_report_to_and_warmup():
    for value in ("none", "all"):
        config(report_to=value)
    with pytest.raises(InfalignError, match="train: report_to 'nosuchlogger' is not a logger transformers knows; "
                                            "allowed: none, all, azure_ml, "):
        config(report_to="nosuchlogger")
    with pytest.raises(InfalignError, match=r"train: warmup_steps must be an integer >= 0, got -5"):
        config(warmup_steps=-5)


def test_report_to_a_logger_that_is_not_installed(monkeypatch):
    import transformers.integrations as integrations

    monkeypatch.setattr(integrations, "get_available_reporting_integrations", lambda: [])
    with pytest.raises(InfalignError, match=r"train: report_to 'wandb' needs the wandb package, which is not "
                                            r"installed here \(pip install wandb\), or pass --report-to none"):
        config(report_to="wandb")


@pytest.mark.parametrize("flags, said", [
    (("--lr-scheduler-type", "bogus"), "train: lr_scheduler_type 'bogus' is not a transformers scheduler"),
    (("--report-to", "nosuchlogger"), "train: report_to 'nosuchlogger' is not a logger transformers knows"),
    (("--warmup-steps", "-5"), "train: warmup_steps must be an integer >= 0, got -5"),
])
def test_train_flags_are_one_line_on_the_command_line(build, tmp_path, capsys, flags, said):
    assert said in error_line(capsys, train_argv(build, tmp_path / "a", *flags))
    assert not (tmp_path / "a").exists()


def test_target_modules_are_checked_against_the_model(build, tmp_path, capsys):
    err = error_line(capsys, train_argv(build, tmp_path / "a", "--target-modules", "q_proj", "nope_proj"))
    assert (f"target_modules ['nope_proj'] name no module of model {build['lm']!r}; its layers with a weight matrix "
            "are: down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj (or pass "
            "'all-linear')") in err
    err = error_line(capsys, train_argv(build, tmp_path / "a", "--target-modules", "input_layernorm"))
    assert "cannot add LoRA layers to model" in err and "input_layernorm" in err and "is not supported" in err
    assert not (tmp_path / "a").exists()


def test_one_target_module_name_is_a_name(build):
    """peft reads a single string as a regular expression over full module paths, so 'q_proj' alone matched no
    module; the flag takes names, and one name is a list of one."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from offline_infalign.models.modeling import lora_config

    for names in (["q_proj"], "q_proj"):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(build["lm"]), lora_config(2, target_modules=names))
        wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
        assert wrapped == {"q_proj"}
    assert lora_config(2, target_modules=["all-linear"]).target_modules == "all-linear"
