"""Kernels: Pallas implementations of hot inner steps, each beside its plain-XLA reference and
a dispatcher (``impl="auto" | "pallas" | "xla"``). On a CPU, ``impl="pallas"`` runs the kernel
in interpret mode, so the tests exercise the kernel's own code; on a GPU it is lowered through
Triton. ``TENSORFACT_DEBUG_DISPATCH=1`` makes the ``"auto"`` dispatchers log (logger
``tensorfact.kernels``) why they chose XLA."""

from tensorfact.kernels._mttkrp import mttkrp, mttkrp_pallas, mttkrp_xla, resolve_mttkrp_impl
from tensorfact.kernels._spd_inverse import MAX_SIZE as SPD_INVERSE_MAX_SIZE
from tensorfact.kernels._spd_inverse import spd_inverse
from tensorfact.kernels._tt_chain import (resolve_tt_chain_impl, tt_chain_matmul,
                                          tt_chain_pallas, tt_chain_xla)

__all__ = ["SPD_INVERSE_MAX_SIZE", "spd_inverse", "mttkrp", "mttkrp_pallas", "mttkrp_xla",
           "resolve_mttkrp_impl", "tt_chain_matmul", "tt_chain_pallas", "tt_chain_xla",
           "resolve_tt_chain_impl"]
