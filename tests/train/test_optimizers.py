"""LLaMA-Factory's use_muon: Muon on the hidden layers' 2-D weights and AdamW on the rest, the
same arithmetic as torch.optim.Muon (match_rms_adamw) and torch.optim.AdamW, in a training run
that resumes exactly."""

import json

import pytest
import torch

from conftest import SHORT_SFT, build_tiny_decoder, run_train
from lmforge.errors import UserError
from lmforge.train.optimizers import MuonAdamW, muon_optimizer


def test_muon_and_adamw_groups_step_as_torchs_own_optimizers():
    torch.manual_seed(0)
    weights = [torch.randn(6, 4), torch.randn(3, 8)]  # wide and tall
    others = [torch.randn(5), torch.randn(7, 2)]
    ours = [p.clone().requires_grad_() for p in weights + others]
    theirs = [p.clone().requires_grad_() for p in weights + others]
    settings = dict(lr=0.02, weight_decay=0.1)
    optimizer = MuonAdamW(ours[:2], ours[2:], betas=(0.9, 0.95), eps=1e-8, **settings)
    muon = torch.optim.Muon(theirs[:2], adjust_lr_fn="match_rms_adamw", **settings)
    adamw = torch.optim.AdamW(theirs[2:], betas=(0.9, 0.95), eps=1e-8, **settings)
    for step in range(3):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer.step()
        muon.step()
        adamw.step()
        for p, q in zip(ours, theirs):
            assert torch.allclose(p, q, atol=1e-6), step
    assert not any(torch.equal(p, w) for p, w in zip(ours, weights + others))  # they moved


def test_muon_takes_hidden_weights_and_leaves_embedding_head_and_norms_to_adamw():
    from types import SimpleNamespace

    model = build_tiny_decoder("llama", 50, tie_word_embeddings=False)
    args = SimpleNamespace(
        learning_rate=1e-3, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8
    )
    optimizer = muon_optimizer(model, args)
    groups = {g["muon"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[i] for i in groups[True]}
    adamw = {names[i] for i in groups[False]}
    assert "model.layers.0.self_attn.q_proj.weight" in muon
    assert "model.layers.1.mlp.down_proj.weight" in muon
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= adamw
    assert not any("norm" in n or "embed" in n or "lm_head" in n for n in muon)
    assert len(muon) + len(adamw) == len(list(model.parameters()))


@pytest.fixture
def built_optimizers(monkeypatch) -> list:
    """The optimizers the Trainer creates during the test, in order."""
    from transformers import Trainer

    built = []
    create = Trainer.create_optimizer

    def spy(self, *args, **kwargs):
        built.append(create(self, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(Trainer, "create_optimizer", spy)
    return built


def without_package(monkeypatch, module: str) -> None:
    """As if `module` were not installed (importlib.util.find_spec finds nothing)."""
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else find(name, *a)
    )


def _losses(run) -> list[float]:
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_full_fine_tuning_with_muon_learns_and_resumes_exactly(tmp_path, tiny_model_dir):
    settings = dict(
        finetuning_type="full", use_muon=True, learning_rate=2e-3, max_steps=4, save_steps=2
    )
    full = run_train(tmp_path / "a", tiny_model_dir, SHORT_SFT, **settings)
    losses = _losses(full)
    assert losses[-1] < losses[0], losses
    first = run_train(tmp_path / "b", tiny_model_dir, SHORT_SFT, **settings)
    state = torch.load(first.output_dir / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert {g["muon"] for g in state["param_groups"]} == {True, False}
    resumed = run_train(
        tmp_path / "b",
        tiny_model_dir,
        SHORT_SFT,
        resume_from_checkpoint=str(first.output_dir / "checkpoint-2"),
        **settings,
    )
    assert _losses(resumed) == pytest.approx(losses, abs=1e-6)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"loraplus_lr_ratio": 16}, "use_muon and loraplus_lr_ratio each choose"),
        ({"optim": "adafactor"}, "use_muon and optim each choose"),
        ({"deepspeed": "examples/deepspeed/ds_z2_config.json"}, "deepspeed gives the optimizer"),
    ],
)
def test_muon_with_another_optimizer_or_sharding_is_refused(
    tmp_path, tiny_model_dir, settings, message
):
    with pytest.raises(UserError, match=message):
        run_train(tmp_path, tiny_model_dir, SHORT_SFT, use_muon=True, **settings)


@pytest.mark.parametrize(
    "settings, optimizer, group",
    [
        (
            {"use_galore": True, "galore_rank": 4, "galore_scale": 0.5},
            "galore_torch",
            {"rank": 4, "update_proj_gap": 200, "scale": 0.5, "proj_type": "std"},
        ),
        (
            {"use_apollo": True, "apollo_rank": 2, "apollo_proj": "svd"},
            "apollo_torch",
            {"rank": 2, "proj": "svd", "scale": 32.0, "scale_type": "channel"},
        ),
        (
            {"use_galore": True, "galore_layerwise": True, "galore_target": "q_proj,v_proj"},
            "transformers",  # its LayerWiseDummyOptimizer
            None,
        ),
    ],
    ids=["galore", "apollo", "galore-layerwise"],
)
def test_galore_and_apollo_train_the_hidden_layers_with_llamafactorys_settings(
    tmp_path, tiny_model_dir, built_optimizers, settings, optimizer, group
):
    """The optimizer's package, and the settings of its projected group (None: layer-wise)."""
    built = built_optimizers
    run = run_train(
        tmp_path, tiny_model_dir, SHORT_SFT, finetuning_type="full", max_steps=3, **settings
    )
    losses = _losses(run)
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # finite, not NaN
    assert type(built[0]).__module__.split(".")[0] == optimizer
    if group is None:  # layer-wise: one optimizer per weight, the targets' with GaLore's rank
        inner = {id(p): o for p, o in built[0].optimizer_dict.items()}
        q = run.model.model.layers[0].self_attn.q_proj.weight
        k = run.model.model.layers[0].self_attn.k_proj.weight
        assert inner[id(q)].param_groups[0]["rank"] == 16
        assert "rank" not in inner[id(k)].param_groups[0]
        return
    projected = [g for g in built[0].param_groups if "rank" in g]
    assert len(projected) == 1 and {k: projected[0][k] for k in group} == group
    names = {id(p): n for n, p in run.model.named_parameters()}
    targets = {names[id(p)] for p in projected[0]["params"]}
    assert "model.layers.0.self_attn.q_proj.weight" in targets
    assert "model.layers.1.mlp.down_proj.weight" in targets
    assert not any("embed" in n or "norm" in n or "lm_head" in n for n in targets)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"use_galore": True}, "works with finetuning_type: full"),
        ({"use_galore": True, "use_apollo": True, "finetuning_type": "full"}, "each choose"),
        (
            {
                "use_apollo": True,
                "apollo_layerwise": True,
                "finetuning_type": "full",
                "gradient_accumulation_steps": 2,
            },
            "gradients cannot accumulate",
        ),
    ],
)
def test_low_rank_settings_that_cannot_apply_are_refused(
    tmp_path, tiny_model_dir, settings, message
):
    with pytest.raises(UserError, match=message):
        run_train(tmp_path, tiny_model_dir, SHORT_SFT, **settings)


def test_a_missing_low_rank_package_names_its_extra(tmp_path, tiny_model_dir, monkeypatch):
    without_package(monkeypatch, "galore_torch")
    with pytest.raises(UserError, match=r"pip install 'lmforge\[galore\]'"):
        run_train(tmp_path, tiny_model_dir, SHORT_SFT, use_galore=True, finetuning_type="full")


def test_adam_mini_trains_with_the_models_width_and_heads(
    tmp_path, tiny_model_dir, built_optimizers
):
    run = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT_SFT,
        finetuning_type="full",
        use_adam_mini=True,
        learning_rate=1e-3,
        max_steps=4,
    )
    losses = _losses(run)
    assert losses[-1] < losses[0], losses
    optimizer = built_optimizers[0]
    assert type(optimizer).__name__ == "Adam_mini"
    assert (optimizer.dim, optimizer.n_heads, optimizer.n_kv_heads) == (32, 2, 1)
    trained = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert trained == sum(p.numel() for p in run.model.parameters())


def test_adam_mini_without_its_package_names_the_extra(tmp_path, tiny_model_dir, monkeypatch):
    without_package(monkeypatch, "adam_mini")
    with pytest.raises(UserError, match=r"pip install 'lmforge\[adam-mini\]'"):
        run_train(tmp_path, tiny_model_dir, SHORT_SFT, use_adam_mini=True, finetuning_type="full")
    with pytest.raises(UserError, match="Fix: set finetuning_type: full or freeze"):
        run_train(tmp_path, tiny_model_dir, SHORT_SFT, use_adam_mini=True)
