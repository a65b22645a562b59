"""Where this process stands in a launch: its rank, the world's size, its device, the launch.

Launched alone (no launcher's variables in the environment) this imports nothing heavy: rank
0 of 1 on the configured device, exactly as a batch ran before there were launches.

Under ``accelerate launch`` or ``torchrun`` the device comes from Accelerate's
``PartialState`` (``cuda:<local rank>`` on a GPU server, the CPU with ``--cpu``), imported
only here. The rank and world size come from it too, except where it reports a single
process while the launcher started several: on a machine without GPUs, ``accelerate launch
--multi_gpu`` and ``torchrun`` start N processes (and a process group) but PartialState 1.16
says ``DistributedType.NO``, rank 0 of 1, in each. The launcher's own ``RANK`` /
``WORLD_SIZE`` are the truth then.

The launch id ties together what the processes of one launch write (claims, manifests, rank
reports): rank 0 draws it and broadcasts it over the process group the launcher set up.
``TORCHELASTIC_RUN_ID`` cannot serve, as ``accelerate launch`` always sets it to "none".
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

# Variables a launcher sets; any of them means "launched", and PartialState is asked.
LAUNCH_VARS = ("WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "ACCELERATE_USE_CPU")


@dataclass(frozen=True)
class Place:
    rank: int
    world_size: int
    local_rank: int
    host: str
    device: str | None  # None: the configured device (no launcher)
    launch: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def label(self) -> str:
        return f"rank {self.rank}/{self.world_size}"


def launched(environ=os.environ) -> bool:
    return any(name in environ for name in LAUNCH_VARS)


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def detect() -> Place:
    host = socket.gethostname()
    if not launched():
        return Place(0, 1, 0, host, None, f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}")

    from accelerate import PartialState

    state = PartialState()
    rank, world, local = state.process_index, state.num_processes, state.local_process_index
    if world == 1:
        world = _env_int(("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"), 1)
        rank = _env_int(("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"), 0)
        local = _env_int(("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"), 0)
    return Place(rank, world, local, host, str(state.device), _shared_launch_id(rank, host))


def _shared_launch_id(rank: int, host: str) -> str:
    import torch.distributed as dist

    mine = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return mine
    box = [mine if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def finish() -> None:
    """Leave the process group, if the launcher made one (quietly, as every rank exits)."""
    if not launched():
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(configured: str, place: Place) -> tuple[str, str | None]:
    """The device this process runs on, and a warning when the configuration fights the launch."""
    if place.device is None or configured == place.device:
        return configured, None
    if configured in ("auto", "cuda") or (configured == "cpu" and place.device == "cpu"):
        return place.device, None
    if place.world_size > 1:
        return configured, (
            f"diffusion.device is {configured!r}, so every process of this launch uses it; "
            f'set diffusion.device = "auto" to give each its own ({place.device} here)'
        )
    return configured, None
