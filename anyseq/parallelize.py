"""Memory and parallelism options, applied to a built Transformer from outside it.

torchtitan's recipe: the model is built on the meta device (no memory, no random draws), then
activation checkpointing, ``torch.compile`` and FSDP2 sharding are applied block by block, and
only then is it allocated. Sharded, each rank allocates only its shards and fills them with
the values a single-device run of the same seed draws, so a sharded run starts where a DDP run
does. Plain PyTorch; the Lightning side is ``anyseq.strategy`` (``--trainer.strategy=fsdp2``).
"""

from __future__ import annotations

from functools import partial

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from anyseq.config import ModelConfig
from anyseq.helpers import exists
from anyseq.model import Transformer


CHECKPOINT_POLICIES = ("full", "save_matmuls")


def check_activation_checkpointing(every: int, policy: str = "full") -> int:
    if every < 0:
        raise ValueError(f"activation_checkpointing must be 0 (off) or n >= 1 (every n-th block), got {every}")
    if policy not in CHECKPOINT_POLICIES:
        raise ValueError(f"checkpoint_policy {policy!r}: choose one of {', '.join(CHECKPOINT_POLICIES)}")
    return every


def _save_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Keep the outputs that are costly to recompute (linear layers, attention); recompute the
    norms, RoPE, SwiGLU's gate, dropout and residual adds (torchtitan's selective op checkpointing)."""
    aten = torch.ops.aten
    costly = (aten.mm.default, aten.addmm.default, torch.ops.anyseq.attention.default,
              aten._scaled_dot_product_flash_attention.default, aten._scaled_dot_product_efficient_attention.default,
              aten._scaled_dot_product_cudnn_attention.default, aten._scaled_dot_product_flash_attention_for_cpu.default)
    return CheckpointPolicy.MUST_SAVE if op in costly else CheckpointPolicy.PREFER_RECOMPUTE


def apply_activation_checkpointing(model: Transformer, every: int, policy: str = "full") -> None:
    """Recompute every ``every``-th block's activations in the backward instead of keeping them:
    all of them (``full``), or all but the matmul and attention outputs (``save_matmuls``).

    The block's ``forward`` is replaced rather than the module wrapped, so parameter names (and
    so checkpoints) stay the same. Dropout replays the same masks (the RNG state is restored).
    """
    if not check_activation_checkpointing(every, policy):
        return
    selective = {"context_fn": partial(create_selective_checkpoint_contexts, _save_matmuls)}
    options = selective if policy == "save_matmuls" else {}
    for block in model.layers[::every]:
        block.forward = partial(checkpoint, block.forward, use_reentrant=False, **options)


class _NewTensors(TorchDispatchMode):
    """Remembers (weakly) the storage of every tensor the ops under it produce."""

    def __init__(self):
        super().__init__()
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                self.storages[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        return out


def activation_bytes(model: Transformer, forward):
    """Bytes that ``forward()`` leaves alive for the backward (what it made and something still
    holds: autograd's saved tensors and selective checkpointing's cache alike), parameters
    excluded: what activation checkpointing trades compute for, on any device. Returns the bytes
    and what ``forward`` returned."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with _NewTensors() as made:
        out = forward()
    alive = sum(n for ptr, (ref, n) in made.storages.items() if not ref.expired() and ptr not in params)
    return alive, out


def apply_compile(model: Transformer) -> None:
    """``torch.compile`` each block's forward (FSDP's hooks, around it, stay eager)."""
    for block in model.layers:
        block.forward = torch.compile(block.forward)


def apply_fsdp(model: Transformer, mesh: DeviceMesh, param_dtype: torch.dtype | None = None) -> None:
    """FSDP2: one shard group per block, the embedding, final norm and output in the root's group.

    ``param_dtype`` (e.g. bf16) is the dtype parameters are gathered and computed in; gradients
    are reduced in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    last = len(model.layers) - 1
    for i, block in enumerate(model.layers):
        # the last block's parameters are needed again at once by the backward: keep them gathered
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i < last)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)


@torch.no_grad()
def init_sharded(model: Transformer, device: torch.device | str) -> None:
    """Allocate a sharded meta-device model on ``device`` and fill each rank's shards.

    Each parameter is drawn whole on the CPU, in the order ``init_weights`` draws them, and each
    rank keeps its shard: the same values as an unsharded model, one full parameter in memory at
    a time.
    """
    from torch.distributed.tensor import distribute_tensor

    model.to_empty(device=device)  # FSDP2 keeps tied parameters tied
    for name, p in model.named_parameters():
        full = torch.empty(p.shape, dtype=p.dtype)
        model.init_parameter(name, full)
        p.to_local().copy_(distribute_tensor(full.to(p.device), p.device_mesh, p.placements).to_local())


def materialize(model: Transformer, device: torch.device | str = "cpu") -> Transformer:
    """Allocate a meta-device model whole on ``device`` and initialise it."""
    model.to_empty(device=device)
    model.tie_weights()
    model.init_weights()
    return model


def build(
    config: ModelConfig,
    *,
    mesh: DeviceMesh | None = None,
    device: torch.device | str = "cpu",
    activation_checkpointing: int = 0,
    checkpoint_policy: str = "full",
    compile: bool = False,
    param_dtype: torch.dtype | None = None,
    load=None,
) -> Transformer:
    """The model for a training run, every option applied in torchtitan's order.

    Args:
        mesh: a 1-D data-parallel mesh to shard over with FSDP2; ``None`` keeps the model whole
            (single device or DDP).
        device: where a sharded model allocates its shards; a whole one is built on the CPU.
        activation_checkpointing: recompute every n-th block in the backward (1: all; 0: off).
        checkpoint_policy: what a checkpointed block recomputes: ``full`` (everything) or
            ``save_matmuls`` (only the cheap ops).
        compile: ``torch.compile`` each block.
        param_dtype: FSDP2's compute dtype for gathered parameters.
        load: called with the whole, initialised model before anything is applied (fine-tuning
            loads its checkpoint here); a sharded model then shards the loaded weights.
    """
    with torch.device("meta"):
        model = Transformer(config)
    sharded_init = exists(mesh) and not exists(load)
    if not sharded_init:
        materialize(model)
        if exists(load):
            load(model)
    apply_activation_checkpointing(model, activation_checkpointing, checkpoint_policy)
    if compile:
        apply_compile(model)
    if exists(mesh):
        apply_fsdp(model, mesh, param_dtype)
        if sharded_init:
            init_sharded(model, device)
    return model
