"""The op tier of coupled-mamba: the fused coupled selective scan and everything it needs (the
custom ops with their fakes and autograd, the coupling parser, the compiled-library loader, the
checks, the reference oracle, the streaming step's state update). Imports nothing above it."""
from .coupling import COUPLING_MODES, Coupling, ParsedCoupling, parse_coupling
from .inputs import make_inputs, random_lengths
from .library import cpu_isa, cuda_device_count, has_cuda
from .reference import coupled_selective_scan_ref
from .scan import CoupledSelectiveScanFn, coupled_selective_scan
from .settings import get_cuda_time_segments, get_num_threads, set_cuda_time_segments, set_num_threads
from .step import coupled_scan_step, couple_states

__all__ = [
    "COUPLING_MODES", "Coupling", "CoupledSelectiveScanFn", "ParsedCoupling", "coupled_scan_step",
    "coupled_selective_scan", "coupled_selective_scan_ref", "couple_states", "cpu_isa", "cuda_device_count",
    "get_cuda_time_segments", "get_num_threads", "has_cuda", "make_inputs", "parse_coupling", "random_lengths",
    "set_cuda_time_segments", "set_num_threads",
]
