"""--offload_activations_async: the tensors the forward saves for backward go to pinned CPU memory on a side CUDA
stream and come back ahead of their use, so their GPU memory no longer grows with the layers and the copies overlap the
compute (torch's `save_on_cpu`, --offload_activations, copies on the compute stream and fetches each on demand).
Without CUDA the copies are synchronous, so the logic (and the numbers) are tested on a CPU.
Kept over TRL's OffloadActivations: same speed on an H200 (bench/offload_tiling.py, one 64k sequence: 25,857 against
25,595 tokens/s) at the same peak, where neither lowered the peak, so no memory difference could show."""
from __future__ import annotations

import weakref

import torch
from torch.autograd.graph import saved_tensors_hooks

MIN_BYTES = 1 << 20  # below this a copy costs more in launch and synchronisation than it frees
# Prefetch at most `prefetch` tensors and, beyond the first, PREFETCH_BYTES: at 500k tokens one layer input is 3.8 GiB
# and its layer's backward takes seconds, so a second prefetched input would only hold 3.8 GiB more (measured on an
# H200), while at 16k tokens (128 MiB inputs) two keep the copies ahead of the compute
PREFETCH_BYTES = 1 << 30


class _Packed:
    """One offloaded tensor: its host copy, and while prefetched its device copy and the event that ends that copy."""
    __slots__ = ("cpu", "device", "index", "gpu", "ready", "last", "__weakref__")

    def __init__(self, cpu, device, index):
        self.cpu, self.device, self.index = cpu, device, index
        self.gpu = self.ready = self.last = None


def _is_parameter(t) -> bool:
    while t is not None:  # mm saves weight.t(), a view: look through views
        if isinstance(t, torch.nn.Parameter):
            return True
        t = t._base
    return False


class offload_saved_tensors(saved_tensors_hooks):
    """Context manager around the forward: `with offload_saved_tensors(): loss = model(**batch).loss`, then
    `loss.backward()` outside it.  `stream`: the side stream, None without CUDA (or set None: synchronous copies of
    CPU tensors, as the CPU tests do).  Counters: `offloaded`, `offloaded_bytes`, `prefetched`."""

    def __init__(self, min_bytes: int = MIN_BYTES, prefetch: int = 2):
        self.min_bytes, self.prefetch = min_bytes, prefetch
        self.stream = torch.cuda.Stream() if torch.cuda.is_available() else None
        self.order, self.seen = [], {}  # weak refs in pack order; id(tensor) -> (weak tensor, version, packed)
        self.offloaded = self.offloaded_bytes = self.prefetched = 0
        super().__init__(self._pack, self._unpack)

    def _keep(self, t) -> bool:  # weights, small, sparse, CPU and broadcast (stride-0) tensors stay where they are
        return (t.nbytes < self.min_bytes or t.layout != torch.strided or _is_parameter(t)
                or (t.device.type == "cpu" and self.stream is not None) or 0 in t.stride())

    def _pack(self, t):
        if self._keep(t):
            return t
        hit = self.seen.get(id(t))  # x saved by both gate_proj and up_proj is copied once
        if hit and hit[0]() is t and hit[1] == t._version and hit[2]() is not None:
            return hit[2]()
        if self.stream is None:
            cpu = t.detach().to("cpu", copy=True)
        else:  # wait for the compute that produced t, then copy it out on the side stream
            self.stream.wait_stream(torch.cuda.current_stream(t.device))
            with torch.cuda.stream(self.stream):
                cpu = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                cpu.copy_(t.detach(), non_blocking=True)
            t.record_stream(self.stream)  # its memory is not reused before the copy has read it
        packed = _Packed(cpu, t.device, len(self.order))
        self.order.append(weakref.ref(packed))
        self.seen[id(t)] = (weakref.ref(t), t._version, weakref.ref(packed))
        self.offloaded += 1
        self.offloaded_bytes += cpu.nbytes
        return packed

    def _fetch(self, p: _Packed) -> None:
        """Starts p's host-to-device copy (behind its device-to-host copy, which ran on the same stream)."""
        if self.stream is None:
            p.gpu = p.cpu.to(p.device)
            return
        with torch.cuda.stream(self.stream):
            p.gpu = p.cpu.to(p.device, non_blocking=True)
            p.ready = self.stream.record_event()

    def _prefetch_before(self, index: int) -> None:
        """The backward roughly unwinds the forward: fetch the tensors packed just before `index` (only a guess for
        speed: a tensor not prefetched is fetched on demand)."""
        fetched = 0
        for ref in self.order[max(0, index - self.prefetch):index][::-1]:
            p = ref()
            if p is not None and p.gpu is None and p.last is None:  # never one the backward already used
                size = p.cpu.nbytes
                if fetched and fetched + size > PREFETCH_BYTES:
                    break
                self._fetch(p)
                self.prefetched += 1
                fetched += size

    def _unpack(self, p):
        if not isinstance(p, _Packed):
            return p
        t = p.last and p.last()
        if t is not None:  # saved twice, and the first user still holds the device copy
            return t
        if p.gpu is None:
            self._fetch(p)
        t, p.gpu = p.gpu, None  # the graph holds it now; once it is dropped, another unpack copies again
        p.last = weakref.ref(t)
        if p.ready is not None:
            torch.cuda.current_stream(t.device).wait_event(p.ready)
            t.record_stream(torch.cuda.current_stream(t.device))  # allocated on the side stream, used here
        self._prefetch_before(p.index)
        return t

    def __exit__(self, *exc):
        self.seen.clear()  # ids may be reused once the forward's tensors die
        self._prefetch_before(len(self.order))  # the backward starts with the last packed tensors
        return super().__exit__(*exc)
