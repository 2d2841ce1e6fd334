"""Worker for the two-process bank test (run by torchrun, not collected by pytest): builds `sample_chunks()` into
the folder given as argv[1] with `Accelerator(cpu=True)`, each process encoding its own shards."""
from __future__ import annotations

import sys

from elasticmem_core.core.config import BankConfig
from elasticmem_core.memorysuite.records import Chunk

MP_BANK = dict(n_c=4, max_length=64, batch_size=3, shard_size=5)


def sample_chunks(n_memories: int = 3, per_memory: int = 7) -> list[Chunk]:
    """Chunks of varied lengths, some shorter than N_c, spread over a few memories."""
    words = "Lisbon blue Portuguese spring fox dog colour learning quick lazy".split()
    out = []
    for m in range(n_memories):
        for i in range(per_memory):
            n = (m * per_memory + i) % 9
            text = f"User: {' '.join(words[:n])}\nAssistant: ok {i}" if n else words[i % len(words)]
            out.append(Chunk(chunk_id=f"m{m}#{i}", memory_id=f"m{m}", index=i, text=text))
    return out


if __name__ == "__main__":
    from accelerate import Accelerator

    from elasticmem_core.core.backbone import load_backbone
    from elasticmem_core.method import bank

    accelerator = Accelerator(cpu=True)
    built = bank.build(sample_chunks(), load_backbone("tiny-random"), BankConfig(**MP_BANK), sys.argv[1],
                       accelerator=accelerator, progress=False)
    print(f"process {accelerator.process_index}/{accelerator.num_processes}: "
          f"built {built.build_stats.shards_built} shards, bank of {len(built)} chunks", flush=True)
