"""The GPUs a trainer shares out between its running jobs: each job trains on GPUs of its own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["GpuPool"]


class GpuPool:
    """The GPUs this trainer may use, and which of them running jobs hold.

    GPUs are named as ``CUDA_VISIBLE_DEVICES`` names them (indices or UUIDs), so a job's share
    is handed to its processes in the same terms. A CPU trainer has none, and its jobs ask for
    none.
    """

    def __init__(self, devices: Iterable[str]) -> None:
        self.devices = tuple(devices)
        self._held: set[str] = set()

    @classmethod
    def visible(cls, env: Mapping[str, str], count: int) -> GpuPool:
        """The ``count`` GPUs torch sees, named as the operator's ``CUDA_VISIBLE_DEVICES`` names
        them when it is set."""
        named = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        return cls(named[:count] if named else [str(index) for index in range(count)])

    def demand(self, gpu_count: int) -> int:
        """How many GPUs a job asking for ``gpu_count`` takes.

        0 means every GPU of the trainer, which is what LLaMA-Factory itself would use. A count
        above the trainer's GPUs is refused at submission; one that gets here anyway (a job
        submitted before a restart on fewer GPUs) takes them all rather than wait forever.
        """
        if gpu_count <= 0:
            return len(self.devices)
        return min(gpu_count, len(self.devices))

    def free(self) -> int:
        """How many GPUs no running job holds."""
        return len(self.devices) - len(self._held)

    def take(self, count: int) -> tuple[str, ...] | None:
        """Hold ``count`` free GPUs (the first ones, in the trainer's order), or None when
        fewer are free."""
        free = [device for device in self.devices if device not in self._held]
        if len(free) < count:
            return None
        taken = tuple(free[:count])
        self._held.update(taken)
        return taken

    def give_back(self, devices: Iterable[str]) -> None:
        """Release GPUs a finished job held."""
        self._held.difference_update(devices)
