"""Kernels: Pallas implementations of hot inner steps, each beside its plain-XLA reference and
a dispatcher (``impl="auto" | "pallas" | "xla"``).

``impl="pallas"`` runs the kernel of the backend's target: lowered through Triton on a GPU,
through Mosaic on a TPU, and on a CPU in the interpret mode of ``target`` (``"gpu"`` by
default; ``"tpu"`` runs the Mosaic kernel's code with TPU semantics), so the tests exercise
the kernels' own code. ``impl="auto"`` takes a kernel only on a backend where it has been
measured to beat XLA: the names in :data:`MEASURED_ON_GPU` and :data:`MEASURED_ON_TPU`.
``TENSORFACT_DEBUG_DISPATCH=1`` makes the ``"auto"`` dispatchers log (logger
``tensorfact.kernels``) why they chose XLA."""

from tensorfact.kernels._mttkrp import mttkrp, mttkrp_pallas, mttkrp_xla, resolve_mttkrp_impl
from tensorfact.kernels._spd_inverse import MAX_SIZE as SPD_INVERSE_MAX_SIZE
from tensorfact.kernels._pallas import MEASURED_ON_GPU, MEASURED_ON_TPU
from tensorfact.kernels._spd_inverse import resolve_spd_inverse_impl, spd_inverse
from tensorfact.kernels._tt_chain import (resolve_tt_chain_impl, tt_chain_matmul,
                                          tt_chain_pallas, tt_chain_xla)

__all__ = ["MEASURED_ON_GPU", "MEASURED_ON_TPU", "SPD_INVERSE_MAX_SIZE", "spd_inverse",
           "resolve_spd_inverse_impl", "mttkrp", "mttkrp_pallas", "mttkrp_xla",
           "resolve_mttkrp_impl", "tt_chain_matmul", "tt_chain_pallas", "tt_chain_xla",
           "resolve_tt_chain_impl"]
