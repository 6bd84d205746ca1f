import pytest

from alambic.errors import InvalidRequestError
from alambic.models.cpu import bf16_autocast_pays, cpu_flags
from alambic.models.gguf import AUTO, best_gguf_type, resolve_gguf_type

ZEN3 = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}  # no AVX-512
ZEN4 = ZEN3 | {"avx512f", "avx512bw", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN3 | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(ZEN3, "f16"), (ZEN3 | {"avx512f", "avx512bw"}, "f16"), (ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16"), (set(), "f16")],
    ids=["avx2", "avx512-without-bf16", "avx512_bf16", "amx", "unknown"],
)
def test_bf16_only_where_the_cpu_has_bf16_instructions(flags, expected):
    assert best_gguf_type(flags) == expected


def test_an_explicit_encoding_overrides_the_cpus_choice():
    assert resolve_gguf_type("q8_0", flags=ZEN4) == "q8_0"
    assert resolve_gguf_type("bf16", flags=ZEN3) == "bf16"
    assert resolve_gguf_type(AUTO, flags=ZEN3) == "f16"
    assert resolve_gguf_type(AUTO, flags=ZEN4) == "bf16"
    with pytest.raises(InvalidRequestError, match="Unknown GGUF encoding 'fp8'"):
        resolve_gguf_type("fp8", flags=ZEN3)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "avx2", "avx512_bf16"})
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_bf16_autocast_only_where_it_is_faster():
    assert not bf16_autocast_pays("cpu", {"avx2", "avx512f"})  # emulated bf16: 7x slower than fp32 here
    assert bf16_autocast_pays("cpu", {"avx512f", "avx512_bf16"})
    assert bf16_autocast_pays("cuda", set())
