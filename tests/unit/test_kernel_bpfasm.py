"""eBPF assembly in Python: golden bytes, labels, the kernel's program tag.

Golden encodings are LLVM 14's BPF assembler's (``llvm-mc -triple bpfel -mattr=+alu32
-show-encoding``) for the same instructions; LLVM's assembler has no syntax for the
store-immediate class and the fetch flag, whose encodings are the kernel's instruction-set
document's (BPF_ST | BPF_MEM | size; imm BPF_ADD | BPF_FETCH).
"""

from __future__ import annotations

import pytest

from kernel import bpfasm as A
from kernel.bpfasm import DW, FP, R0, R1, R2, R3, R6, R7, R8, R9, Asm, AsmError, B, H, W

pytestmark = pytest.mark.unit

GOLDEN = [  # (what llvm-mc was given, how we say it, the bytes llvm-mc printed)
    ("r6 = r1", lambda a: a.mov(R6, R1), "bf16000000000000"),
    ("r0 = 0", lambda a: a.mov_imm(R0, 0), "b700000000000000"),
    ("r0 = -1", lambda a: a.mov_imm(R0, -1), "b7000000ffffffff"),
    ("w1 = -559038737", lambda a: a.mov32_imm(R1, 0xDEADBEEF), "b4010000efbeadde"),
    ("r2 += -4", lambda a: a.alu_imm(A.ADD, R2, -4), "07020000fcffffff"),
    ("r1 += r2", lambda a: a.alu(A.ADD, R1, R2), "0f21000000000000"),
    ("w0 &= 65535", lambda a: a.alu32_imm(A.AND, R0, 0xFFFF), "54000000ffff0000"),
    ("r1 >>= 16", lambda a: a.alu_imm(A.RSH, R1, 16), "7701000010000000"),
    ("r7 |= 3", lambda a: a.alu_imm(A.OR, R7, 3), "4707000003000000"),
    ("r1 ^= 65535", lambda a: a.alu_imm(A.XOR, R1, 0xFFFF), "a7010000ffff0000"),
    ("r0 = be16 r0", lambda a: a.be(R0, 16), "dc00000010000000"),
    ("r9 = be32 r9", lambda a: a.be(R9, 32), "dc09000020000000"),
    ("r1 = 0x1122334455667788 ll", lambda a: a.ld_imm64(R1, 0x1122334455667788),
     "1801000088776655" "0000000044332211"),
    ("r0 = *(u32 *)(r6 + 16)", lambda a: a.load(W, R0, R6, 16), "6160100000000000"),
    ("r1 = *(u8 *)(r10 - 88)", lambda a: a.load(B, R1, FP, -88), "71a1a8ff00000000"),
    ("r3 = *(u16 *)(r10 - 86)", lambda a: a.load(H, R3, FP, -86), "69a3aaff00000000"),
    ("*(u16 *)(r10 - 84) = r3", lambda a: a.store(H, FP, -84, R3), "6b3aacff00000000"),
    ("*(u32 *)(r10 - 96) = r7", lambda a: a.store(W, FP, -96, R7), "637aa0ff00000000"),
    ("lock *(u64 *)(r8 + 8) += r9", lambda a: a.atomic_add(DW, R8, 8, R9), "db98080000000000"),
    ("lock *(u32 *)(r8 + 0) += r1", lambda a: a.atomic_add(W, R8, 0, R1), "c318000000000000"),
    ("call 69", lambda a: a.call(69), "8500000045000000"),
    ("exit", lambda a: a.exit(), "9500000000000000"),
    # kernel's encodings (no LLVM 14 syntax): ST|MEM|size, dst, off, imm; STX|ATOMIC with BPF_FETCH
    ("*(u64 *)(r10 - 64) = 0", lambda a: a.store_imm(DW, FP, -64, 0), "7a0ac0ff00000000"),
    ("*(u8 *)(r10 - 64) = 2", lambda a: a.store_imm(B, FP, -64, 2), "720ac0ff02000000"),
    ("*(u32 *)(r10 - 56) = 1234", lambda a: a.store_imm(W, FP, -56, 1234), "620ac8ffd2040000"),
    ("w9 = atomic_fetch_add((u32 *)(r8 + 0), w9)", lambda a: a.atomic_add(W, R8, 0, R9, fetch=True),
     "c398000001000000"),
]


@pytest.mark.parametrize("text,emit,golden", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_encodings(text, emit, golden):
    a = Asm()
    emit(a)
    assert a.assemble().hex() == golden, text


def test_jumps_resolve_to_llvm_offsets():
    # llvm-mc: "if r0 != 8 goto +3" 5500030008000000; "if r0 == 0 goto -2" 1500feff00000000;
    # "if r0 >= 224 goto +1" 350001..e0; "if w1 != 0 goto +1" 5601010000000000; "goto +5" 0500050000000000
    a = Asm()
    a.label("back")
    a.mov_imm(R0, 0)
    a.jmp_imm(A.JEQ, R0, 0, "back")        # -2
    a.jmp_imm(A.JNE, R0, 8, "fwd3")        # +3
    a.jmp_imm(A.JGE, R0, 224, "fwd1")      # +1
    a.jmp32_imm(A.JNE, R1, 0, "fwd1b")     # +1
    a.label("fwd1")
    a.jmp("fwd5")
    a.label("fwd1b")
    a.label("fwd3")
    a.exit()
    for _ in range(4):
        a.exit()
    a.label("fwd5")
    a.exit()
    words = [a.assemble()[i:i + 8].hex() for i in range(0, len(a.assemble()), 8)]
    assert words[1] == "1500feff00000000"
    assert words[2] == "5500030008000000"
    assert words[3] == "35000100e0000000"
    assert words[4] == "5601010000000000"
    assert words[5] == "0500050000000000"


def test_map_fd_load_is_a_pseudo_ld_imm64():
    a = Asm().ld_map_fd(R1, 7)
    assert a.assemble().hex() == "1811000007000000" + "0000000000000000"  # src_reg 1 = BPF_PSEUDO_MAP_FD


def test_bad_programs_are_refused_with_the_reason():
    with pytest.raises(AsmError, match="undefined label 'nowhere'"):
        Asm().jmp("nowhere").assemble()
    with pytest.raises(AsmError, match="placed twice"):
        Asm().label("x").label("x")
    with pytest.raises(AsmError, match="r11 does not exist"):
        Asm().mov(11, R0).assemble()
    with pytest.raises(AsmError, match="does not fit 32 bits"):
        Asm().mov_imm(R0, 1 << 33).assemble()
    with pytest.raises(AsmError, match="byte swap of 8 bits"):
        Asm().be(R0, 8)
    with pytest.raises(AsmError, match="32 or 64 bits"):
        Asm().atomic_add(H, R0, 0, R1)
    far = Asm().jmp("end")
    for _ in range(40000):
        far.exit()
    far.label("end").exit()
    with pytest.raises(AsmError, match="does not fit 16 bits"):
        far.assemble()


def test_program_tag_is_the_kernels():
    """Tags a Linux 6.18 kernel reported for these programs (bpftool prog show): SHA-256 of the
    instructions, map fd immediates zeroed; SHA-1 is what kernels before 6.18 use."""
    ret0 = Asm().ret(0).assemble()
    assert A.prog_tags(ret0)[1].hex() == "59f4a931744dcdc6"
    with_map = Asm().ld_map_fd(R1, 5).ret(0).assemble()
    other_fd = Asm().ld_map_fd(R1, 99).ret(0).assemble()
    assert A.prog_tags(with_map) == A.prog_tags(other_fd)
    assert A.prog_tags(with_map)[1].hex() == "0bd0168676c7c779"
    assert A.prog_tags(with_map)[0].hex() == "2c24d7c519a868e3"
    assert A.prog_tags(Asm().ld_imm64(R1, 5).ret(0).assemble()) != A.prog_tags(with_map)


def test_disassembly_lists_each_slot():
    lines = A.disassemble(Asm().mov(R6, R1).ret(0).assemble())
    assert lines == ["   0: bf dst=r6 src=r1 off=0 imm=0", "   1: b7 dst=r0 src=r0 off=0 imm=0",
                     "   2: 95 dst=r0 src=r0 off=0 imm=0"]
