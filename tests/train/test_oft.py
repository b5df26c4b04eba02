"""finetuning_type: oft (LLaMA-Factory's OFT, peft's OFTConfig): only the orthogonal blocks
train, the adapter reloads to the trained model's logits in chat and export, and the base
with the adapter disabled is the reference (DPO)."""

import json

import pytest
import torch

from conftest import INFERENCE, SHORT_SFT, run_train, write_config, write_pairs_dataset
from lmforge.config import load_config


@pytest.fixture(scope="module")
def oft_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("oft-run")
    return run_train(
        folder, tiny_model_dir, SHORT_SFT, finetuning_type="oft", oft_block_size=8, max_steps=4
    )


def test_oft_trains_orthogonal_blocks_only_and_learns(oft_run, caplog):
    trained = [n for n, p in oft_run.model.named_parameters() if p.requires_grad]
    assert trained and all(".oft_" in n for n in trained), trained
    targets = {n.split(".oft_")[0].rsplit(".", 1)[-1] for n in trained}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= targets
    config = json.loads((oft_run.output_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "OFT" and config["oft_block_size"] == 8
    lines = (oft_run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert losses[-1] < losses[0], losses


def test_oft_adapter_answers_in_chat_and_export_as_trained(oft_run, tiny_model_dir, tmp_path):
    from lmforge.cli import main
    from lmforge.infer.engine import HFEngine
    from lmforge.model.load import load_model

    ids = torch.tensor([[2, 4, 93, 91, 77, 90, 103, 5, 6]])
    trained = oft_run.model.eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits.float()
    path = write_config(
        tmp_path,
        tiny_model_dir,
        INFERENCE,
        adapter_name_or_path=str(oft_run.output_dir),
        infer_dtype="float32",
    )
    engine = HFEngine.from_config(load_config(path))
    try:
        with torch.no_grad():
            served = engine.model(input_ids=ids).logits.float()
        assert (served - expected).abs().max() < 1e-4  # merged into the base, in fp32
    finally:
        engine.close()
    out = tmp_path / "exported"
    export = write_config(
        tmp_path,
        tiny_model_dir,
        INFERENCE,
        name="export",
        adapter_name_or_path=str(oft_run.output_dir),
        finetuning_type="oft",
        export_dir=str(out),
    )
    assert main(["export", str(export)]) == 0
    with torch.no_grad():
        merged = load_model(out)(input_ids=ids).logits.float()
    # bf16 shards: within bf16 rounding of the logits' scale
    assert (merged - expected).abs().max() < 0.02 * expected.abs().max()


def test_dpo_with_oft_uses_the_base_as_reference(tmp_path, tiny_model_dir):
    pairs = [
        {"instruction": f"Q{i}?", "input": "", "chosen": "Yes, gladly.", "rejected": "no"}
        for i in range(8)
    ]
    run = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT_SFT,
        records=None,
        stage="dpo",
        dataset="pairs",
        dataset_dir=str(write_pairs_dataset(tmp_path / "data", pairs)),
        finetuning_type="oft",
        max_steps=2,
    )
    state = json.loads((run.output_dir / "trainer_state.json").read_text())
    first = next(h for h in state["log_history"] if "loss" in h)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
