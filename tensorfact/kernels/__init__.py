"""Kernels: Pallas implementations of hot inner steps, each beside its plain-XLA reference and
a dispatcher (``impl="auto" | "pallas" | "xla"``). On a CPU, ``impl="pallas"`` runs the kernel
in interpret mode, so the tests exercise the kernel's own code."""

from tensorfact.kernels.spd_inverse import MAX_SIZE as SPD_INVERSE_MAX_SIZE
from tensorfact.kernels.spd_inverse import spd_inverse

__all__ = ["SPD_INVERSE_MAX_SIZE", "spd_inverse"]
