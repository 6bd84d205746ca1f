"""What this CPU computes natively, from /proc/cpuinfo: what picks an encoding or a precision here."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpuinfo_field(field: str, cpuinfo: Path = CPUINFO) -> str:
    """The first core's `field` in /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return ""


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first core's flags; empty where there are none."""
    return frozenset(cpuinfo_field("flags", cpuinfo).split())


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU multiplies in bf16 itself (AVX512_BF16 or AMX); without, bf16 is emulated and slower."""
    return bool(BF16_FLAGS & set(cpu_flags() if flags is None else flags))


def bf16_autocast_pays(device_type: str, flags: Iterable[str] | None = None) -> bool:
    """bf16 autocast speeds up an accelerator, and a CPU only where it has bf16 instructions."""
    return device_type != "cpu" or native_bf16(flags)
