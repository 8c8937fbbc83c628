"""``--trainer.strategy=fsdp2``: Lightning's ModelParallelStrategy as plain FSDP2.

Registered under that name when ``anyseq.training`` is imported; ``AnySeqModule`` applies the
sharding itself (``anyseq.parallelize``) when it builds the model.
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as plain FSDP2 over every process (no tensor parallelism).

    Checkpoints are gathered into one file on rank 0 by default (what ``anyseq generate``,
    ``export-hf`` and ``init_from`` read); ``save_distributed_checkpoint=True`` writes a folder of
    per-rank shards instead, which only a sharded run can resume from.
    """

    def __init__(self, save_distributed_checkpoint: bool = False, **kwargs):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


if "fsdp2" not in StrategyRegistry:
    StrategyRegistry.register("fsdp2", FSDP2Strategy, description="FSDP2 over every process (anyseq.parallelize)")
