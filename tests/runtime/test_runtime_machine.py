"""Machine description: /proc/cpuinfo parsing on x86 and ARM text, the report's keys, the slug."""

from __future__ import annotations

import re

import numpy

from compress.runtime import machine_description, machine_slug, parse_cpuinfo

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-1185G7 @ 3.00GHz
flags\t\t: fpu vme sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni
processor\t: 1
model name\t: Intel(R) Core(TM) i7-1185G7 @ 3.00GHz
flags\t\t: fpu vme sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni
"""

X86_AVXVNNI = "model name : Intel(R) Core(TM) i5-12400\nflags : avx avx2 avx_vnni\n"

ARM = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_parse_x86_cpuinfo():
    info = parse_cpuinfo(X86)
    assert info["model"] == "Intel(R) Core(TM) i7-1185G7 @ 3.00GHz"
    assert info["isa"] == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"]


def test_parse_avx_vnni_reports_both_spellings():
    assert parse_cpuinfo(X86_AVXVNNI)["isa"] == ["avx", "avx2", "avx_vnni", "avxvnni"]


def test_parse_arm_cpuinfo():
    info = parse_cpuinfo(ARM)
    assert info["model"] is None  # many ARM kernels print no model name
    assert info["isa"] == ["asimd", "asimddp", "asimdhp", "fphp"]


def test_machine_description_holds_what_reports_need():
    d = machine_description()
    assert {"cpu", "os", "python", "versions", "git"} <= set(d)
    assert d["cpu"]["logical_cores"] >= 1
    assert d["versions"]["numpy"] == numpy.__version__
    assert d["git"] is None or re.fullmatch(r"[0-9a-f]{40}", d["git"]["commit"])


def test_machine_slug_is_a_safe_file_name():
    slug = machine_slug({"cpu": {"arch": "x86_64", "model": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
                                 "logical_cores": 8}})
    assert slug == "x86_64-intel-xeon-gold-6338-cpu-2-00ghz-8c"
    assert re.fullmatch(r"[a-z0-9_-]+", machine_slug())
