"""BAdam (Luo et al., 2024; LLaMA-Factory's `use_badam`): full fine-tuning by block coordinate
descent. One decoder layer trains at a time, switching every badam_switch_interval steps; only
that layer has gradients, an fp32 master copy and optimizer states, so a model whose full
fine-tuning needs ~16 bytes a weight trains in ~2 (its bf16 weights) plus one layer's share.

The `badam` package's BlockOptimizer does the work; what it lacks, and `ResumableBlockOptimizer`
adds, is resuming: its state_dict is the wrapped optimizer's alone, so a resumed run would
restart at the first block with fresh fp32 copies rounded from the bf16 weights. Here a
checkpoint also holds the block in training, the switch counters and the fp32 master copies,
and a resume continues exactly (tests/train/test_badam.py).

Layer mode only: the ratio mode (sparse updates of every layer) is refused (config checks).
"""

from __future__ import annotations

import torch

_STATE_KEY = "badam"


def badam_optimizer(model, args, method):
    """The BlockOptimizer over `optim`'s optimizer class (AdamW by default), as LLaMA-Factory
    builds it. BlockOptimizer regroups the layer in training at each switch (weight decay on
    all but biases), reading the decay from the first group: LLaMA-Factory's first group is the
    undecayed one, so its BAdam runs never decay; here the weight decay is the config's."""
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    base = optimizer_cls(
        [{"params": trainable, "weight_decay": args.weight_decay}],
        **{**kwargs, "weight_decay": args.weight_decay},
    )
    return _resumable_class()(
        base_optimizer=base,
        named_parameters_list=list(model.named_parameters()),
        switch_block_every=method.badam_switch_interval,
        start_block=method.badam_start_block,
        switch_mode=method.badam_switch_mode,
        verbose=method.badam_verbose,
    )


def describe(method) -> str:
    start = "" if method.badam_start_block is None else f", from layer {method.badam_start_block}"
    return (
        f"BAdam: one layer at a time ({method.badam_switch_mode}{start}), switching every "
        f"{method.badam_switch_interval} steps"
    )


def _resumable_class():
    from badam import BlockOptimizer

    class ResumableBlockOptimizer(BlockOptimizer):
        """BlockOptimizer whose state_dict holds what a resume needs."""

        def __init__(self, *args, **kwargs):
            self.active_block = None
            super().__init__(*args, **kwargs)
            # BlockOptimizer binds state_dict to the wrapped optimizer's on the instance.
            self.state_dict = self._state_dict_with_blocks

        def switch_trainable_params(self, verbose=1) -> None:
            self.active_block = self.current_block_idx  # the switch moves the index on
            super().switch_trainable_params(verbose)
            # Its new groups take the weight decay of the optimizer's defaults: the biases'
            # group is meant to have none.
            groups = self.base_optimizer.param_groups
            groups[0]["weight_decay"] = self.weight_decay
            for group in groups[1:]:
                group["weight_decay"] = 0.0

        def _state_dict_with_blocks(self) -> dict:
            return {
                "base": self.base_optimizer.state_dict(),
                _STATE_KEY: {
                    "active_block": self.active_block,
                    "next_block": self.current_block_idx,
                    "global_step": self.global_step,
                    "block_order": list(getattr(self, "block_order", [])),
                    # the fp32 master copies of the layer in training
                    "masters": {i: p.detach().clone() for i, p in self.param_idx2hp.items()},
                },
            }

        def load_state_dict(self, state_dict) -> None:
            if _STATE_KEY not in state_dict:  # a checkpoint written by plain BlockOptimizer
                return self.base_optimizer.load_state_dict(state_dict)
            saved = state_dict[_STATE_KEY]
            self.current_block_idx = saved["active_block"]
            self.switch_trainable_params(verbose=0)  # that layer trainable, fresh copies
            self.current_block_idx = saved["next_block"]
            self.global_step = saved["global_step"]
            if self.switch_mode == "random":
                self.block_order = list(saved["block_order"])
            with torch.no_grad():
                for index, master in saved["masters"].items():
                    self.param_idx2hp[int(index)].copy_(master)
            self.base_optimizer.load_state_dict(state_dict["base"])

    return ResumableBlockOptimizer
