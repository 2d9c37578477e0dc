"""Data-parallel training: one trainer process per device, each taking a share of every optimizer step's batch.

A run of `TrainSpec.resources.world_size` processes is started by `trainer.ranks` (one machine, or one launcher per
node) or by torchrun; either sets torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
read here and nowhere else. What stays the same whatever the number of processes:

- the examples of each step: every rank computes the step's global batch (trainer/batches.py, a pure function of
  seed and step) and takes the examples at its own positions in it (`shard`);
- the loss: each rank's summed token losses are divided by the step's target tokens counted over all ranks, and
  DistributedDataParallel averages the gradients, so the update is the one a single process makes for the whole
  batch (up to float summation order);
- resume: a checkpoint holds the global step, which is all any rank needs to find its place.

Adapters (LoRA, QLoRA) train under DistributedDataParallel: every rank holds the whole model. Full weights are
sharded (FSDP2's fully_shard, each decoder layer a unit): a rank holds 1/world of the weights, gradients and Adam
state, and gathers a layer's weights only while it runs; its collectives then run in every forward, so every
rank runs the same number of micro-batches (padding with zero-weighted ones) and evaluates too, and checkpoints
and the published weights are gathered whole onto rank 0 (a collective all ranks join).

Rank 0 alone reports, checkpoints and publishes (and, unsharded, evaluates: the weights are the same on every rank
after each step); every step all ranks agree whether to stop (a SIGTERM may reach them a step apart) with one small
all-reduce.
"""

from __future__ import annotations

import contextlib

import torch

from trainer import dpo
from trainer.batches import MicroBatch
from trainer.modeling import loss_sums
from trainer.world import World


class LossSums(torch.nn.Module):
    """loss_sums as a module, so DistributedDataParallel sees the forward it hooks its gradient sync onto."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, mb: MicroBatch):
        return loss_sums(self.model, mb)


class SupervisedStep:
    """The supervised loss's forward and backward over one rank's micro-batches of a step, and what a run needs
    from the weights whichever way they are laid out (whole on each rank, or sharded)."""

    def __init__(self, model, world: World, shard_weights: bool = False, trains: bool = True):
        """`trains` False: another loss trains the run (PreferenceStep), this one only validates."""
        self.world, self.model = world, model
        self.sharded = world.parallel and shard_weights
        self.forward: torch.nn.Module = LossSums(model)
        # Names of weights tied to another (the head to the embeddings): saved once, as save_pretrained does
        self._tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {
            n for n, _ in model.named_parameters()
        }
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            for layer in model.get_decoder().layers:
                fully_shard(layer)
            # The root unit holds the rest (embeddings, tied or not, the final norm and the head), gathered when
            # LossSums runs: loss_sums calls the decoder and the head apart, around the model's own forward.
            fully_shard(self.forward)
        elif world.parallel and trains:
            from torch.nn.parallel import DistributedDataParallel

            # broadcast_buffers off: rotary tables and the like are the same on every rank and never trained
            self.forward = DistributedDataParallel(self.forward, broadcast_buffers=False)

    def run(self, mbs: list[MicroBatch], targets_here: int, weight: float = 1.0) -> tuple[float, int, int]:
        """Backward over `mbs`, scaled so the averaged gradient is the whole step's mean token loss. Returns the
        step's (summed loss, correct predictions, targets) over all ranks. `weight` 0 is a rank with no examples
        this step: it runs one micro-batch anyway, its loss zeroed, because every rank must join the sync."""
        (targets,) = self.world.sum(targets_here)
        weights = [weight] * len(mbs)
        if self.sharded:  # each forward gathers weights with the other ranks: all run as many
            (most,) = self.world.most(len(mbs))
            weights += [0.0] * (most - len(mbs))
            mbs = mbs + [mbs[0]] * (most - len(mbs))
        loss_total, correct_total = 0.0, 0.0
        for i, (mb, w) in enumerate(zip(mbs, weights)):
            last = i == len(mbs) - 1
            ddp = self.world.parallel and not self.sharded
            sync = self.forward.no_sync() if ddp and not last else contextlib.nullcontext()  # type: ignore[operator]
            with sync:
                loss, correct = self.forward(mb)
                # DDP and FSDP average over ranks; times the world size it is the sum, over the global target count
                (loss * (w * self.world.size / targets)).backward()
            loss_total += w * float(loss.detach())
            correct_total += w * int(correct)
        loss_total, correct_total = self.world.sum(loss_total, correct_total)
        return loss_total, int(correct_total), int(targets)

    @property
    def evaluates_here(self) -> bool:
        """Whether this rank runs validations: rank 0, or every rank when the weights are sharded."""
        return self.world.main or self.sharded

    @torch.no_grad()
    def sums(self, model, mb: MicroBatch):
        """loss_sums of `model` (the run's) for a validation: through the sharded root when it is sharded."""
        return self.forward(mb) if self.sharded else loss_sums(model, mb)

    def full_weights(self) -> dict | None:
        """Sharded: the whole model's weights, on rank 0 ({} elsewhere), gathered by all ranks. Else None: the
        model holds them."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {name: tensor for name, tensor in weights.items() if name not in self._tied}

    def optimizer_state(self, optimizer) -> dict:
        """The optimizer's state, whole on rank 0 when sharded (gathered by all ranks)."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            self.model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_sharded(self, weights: dict, optimizer, optimizer_state: dict) -> None:
        """A checkpoint's whole weights and optimizer state (every rank read them) into this rank's shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        # not strict: a checkpoint of tied embeddings stores the head once, under the embedding's name
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.model, weights, options=options)
        set_optimizer_state_dict(self.model, optimizer, optimizer_state, options=options)


def whole(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (clip_grad_norm_ over sharded parameters returns a DTensor)."""
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm


class PreferenceMargins(torch.nn.Module):
    """DPO's margins as a module, for DistributedDataParallel (as LossSums)."""

    def __init__(self, model, beta: float, token_budget: int, pad_id: int, reference: dpo.Reference):
        super().__init__()
        self.model, self.beta, self.token_budget, self.pad_id, self.reference = (
            model,
            beta,
            token_budget,
            pad_id,
            reference,
        )

    def forward(self, pairs: list[dpo.Pair]) -> torch.Tensor:
        return dpo.margins(self.model, pairs, self.beta, self.token_budget, self.pad_id, self.reference)


class PreferenceStep:
    """DPO's step over one rank's pairs: its loss summed, over the step's pairs counted over all ranks, so the
    averaged gradient is the whole batch's mean loss (as SupervisedStep does with tokens)."""

    def __init__(self, margins: PreferenceMargins, world: World):
        self.world = world
        self.forward: torch.nn.Module = margins
        if world.parallel:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(margins, broadcast_buffers=False)

    def run(self, pairs: list[dpo.Pair], total_pairs: int, weight: float = 1.0) -> dict:
        """`weight` 0: a rank with no pair this step, joining the sync with one pair's loss zeroed."""
        margins = self.forward(pairs)
        losses = -torch.nn.functional.logsigmoid(margins)
        (losses.sum() * (weight * self.world.size / total_pairs)).backward()
        loss, right, margin = self.world.sum(
            weight * float(losses.detach().sum()),
            weight * float((margins > 0).sum()),
            weight * float(margins.detach().sum()),
        )
        return {
            "train_loss": loss / total_pairs,
            "train_mean_token_accuracy": right / total_pairs,
            "train_reward_margin": margin / total_pairs,
        }
