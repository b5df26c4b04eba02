"""moe_aux_loss_coef: a mixture-of-experts model trains with its router's load-balancing loss,
added by lmforge's own losses exactly as the model adds it to the loss it computes itself."""

import pytest
import torch

from conftest import SHORT_SFT, build_tiny_decoder, build_tiny_tokenizer, run_train, write_config
from lmforge.cli import main


def build_tiny_moe(vocab_size: int, **overrides):
    """Four experts of which two run per token, in each of two layers."""
    experts = dict(moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, head_dim=16)
    return build_tiny_decoder("qwen3_moe", vocab_size, **{**experts, **overrides})


@pytest.fixture(scope="module")
def moe_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-moe")
    tokenizer = build_tiny_tokenizer()
    build_tiny_moe(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("chunked", [True, False])
def test_our_losses_add_the_router_loss_as_the_model_does(chunked):
    from lmforge.train.losses.linear_ce import NO_POSITION, LinearCrossEntropyLoss
    from lmforge.train.losses.token_weights import TokenWeighting, WeightedCrossEntropyLoss

    model = build_tiny_moe(40, output_router_logits=True, router_aux_loss_coef=0.5).eval()
    ids = torch.tensor([[3, 17, 5, 29, 8, 11, 2, 9]])
    labels = torch.tensor([[-100, -100, -100, 29, 8, 11, 2, 9]])
    with torch.no_grad():
        own = model(ids, labels=labels)
        assert own.aux_loss is not None and own.aux_loss > 0
        if chunked:
            loss = LinearCrossEntropyLoss(model)
            ours = loss(model(ids, logits_to_keep=NO_POSITION), labels)
        else:  # weights of 1 everywhere: the plain cross-entropy

            class Ones(TokenWeighting):
                def weights(self, nll, top_logits):
                    return torch.ones_like(nll)

            loss = WeightedCrossEntropyLoss(Ones(), model)
            ours = loss(model(ids), labels)
    assert torch.allclose(ours, own.loss, atol=1e-6)
    assert "+ 0.5 x router load-balancing loss" in loss.describe()


def test_moe_aux_loss_coef_trains_with_the_router_loss(tmp_path, moe_model_dir, caplog):
    with caplog.at_level("INFO", logger="lmforge"):
        run = run_train(tmp_path, moe_model_dir, SHORT_SFT, max_steps=2, moe_aux_loss_coef=0.01)
    config = run.model.config
    assert config.output_router_logits is True
    assert config.router_aux_loss_coef == 0.01
    assert "+ 0.01 x router load-balancing loss" in caplog.text
    assert torch.isfinite(torch.tensor(run.final_loss))


def test_moe_aux_loss_coef_on_a_dense_model_is_refused(tmp_path, tiny_model_dir, capsys):
    path = write_config(tmp_path, tiny_model_dir, SHORT_SFT, moe_aux_loss_coef=0.01)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "moe_aux_loss_coef is set, but this `gemma3_text` model has no router loss" in err


def test_dpo_adds_the_router_loss(tmp_path, moe_model_dir):
    from conftest import run_stage

    run = run_stage(tmp_path, moe_model_dir, "dpo", moe_aux_loss_coef=0.01)
    assert run.model.config.output_router_logits is True


def test_stages_without_the_router_loss_refuse_the_key(tmp_path, tiny_model_dir, capsys):
    path = write_config(
        tmp_path, tiny_model_dir, SHORT_SFT, stage="rm", dataset="pairs", moe_aux_loss_coef=0.01
    )
    assert main(["train", str(path)]) == 2
    assert "moe_aux_loss_coef is not used by stage rm" in capsys.readouterr().err
