"""eBPF bytecode, assembled in Python (pure: no syscalls, no compiler).

The instruction format is the kernel's ``struct bpf_insn`` (include/uapi/linux/bpf.h):
one opcode byte, the destination and source registers in one byte (dst in the low
nibble), a signed 16-bit offset and a signed 32-bit immediate, little-endian.
``ld_imm64`` takes two slots. :class:`Asm` collects instructions with symbolic jump
labels and resolves them in :meth:`Asm.assemble`; :func:`prog_tag` computes the tag the
kernel reports for a loaded program (``bpf_prog_calc_tag``), so a pinned program can be
recognised as the one this code would load.

Golden bytes (tests/unit/test_kernel_bpfasm.py) come from LLVM's BPF assembler
(``llvm-mc -triple bpfel -show-encoding``) for the same instructions.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

# registers
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
FP = R10  # read-only frame pointer

# instruction classes
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
# sizes
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
SIZE_BYTES = {W: 4, H: 2, B: 1, DW: 8}
# modes
IMM, ABS, IND, MEM, ATOMIC = 0x00, 0x20, 0x40, 0x60, 0xC0
# sources
K, X = 0x00, 0x08
# ALU operations
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH, END = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0)
TO_LE, TO_BE = 0x00, 0x08
# jumps
JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE, CALL, EXIT, JLT, JLE, JSLT, JSLE = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0)
# atomic operations (imm of an ATOMIC instruction)
FETCH = 0x01
PSEUDO_MAP_FD = 1  # src_reg of ld_imm64: imm is a map fd

_INSN = struct.Struct("<BBhi")
INSN_SIZE = 8


class AsmError(ValueError):
    """A program that cannot be encoded (bad register, unknown label, offset out of range)."""


@dataclass(frozen=True)
class Insn:
    """One 8-byte instruction slot; ``label`` (jumps) is resolved into ``off`` by Asm."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    label: str | None = None

    def encode(self) -> bytes:
        """The 8 bytes of this slot."""
        for reg in (self.dst, self.src):
            if not 0 <= reg <= 10:
                raise AsmError(f"register r{reg} does not exist")
        if not -0x8000 <= self.off <= 0x7FFF:
            raise AsmError(f"offset {self.off} does not fit 16 bits")
        imm = self.imm
        if not -0x80000000 <= imm <= 0xFFFFFFFF:
            raise AsmError(f"immediate {imm} does not fit 32 bits")
        if imm > 0x7FFFFFFF:
            imm -= 1 << 32
        return _INSN.pack(self.code, (self.src << 4) | self.dst, self.off, imm)


class Asm:
    """An eBPF program under construction: add instructions, place labels, assemble.

    Methods are named after what the instruction does; registers are ints (R0..R10).
    Jumps take a label name placed later (or earlier) with :meth:`label`.
    """

    def __init__(self) -> None:
        self.insns: list[Insn] = []
        self.labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.insns)

    def _add(self, insn: Insn) -> Asm:
        self.insns.append(insn)
        return self

    def label(self, name: str) -> Asm:
        """Place ``name`` at the next instruction."""
        if name in self.labels:
            raise AsmError(f"label {name!r} placed twice")
        self.labels[name] = len(self.insns)
        return self

    # -- moves and arithmetic ------------------------------------------------------------
    def mov(self, dst: int, src: int) -> Asm:
        """dst = src (64-bit)."""
        return self._add(Insn(ALU64 | MOV | X, dst, src))

    def mov_imm(self, dst: int, imm: int) -> Asm:
        """dst = imm (sign-extended 32-bit immediate)."""
        return self._add(Insn(ALU64 | MOV | K, dst, 0, 0, imm))

    def mov32_imm(self, dst: int, imm: int) -> Asm:
        """dst = imm as 32 bits, upper half zeroed (for immediates with bit 31 set)."""
        return self._add(Insn(ALU | MOV | K, dst, 0, 0, imm))

    def alu_imm(self, op: int, dst: int, imm: int) -> Asm:
        """dst op= imm (64-bit)."""
        return self._add(Insn(ALU64 | op | K, dst, 0, 0, imm))

    def alu(self, op: int, dst: int, src: int) -> Asm:
        """dst op= src (64-bit)."""
        return self._add(Insn(ALU64 | op | X, dst, src))

    def alu32_imm(self, op: int, dst: int, imm: int) -> Asm:
        """dst op= imm (32-bit, upper half zeroed)."""
        return self._add(Insn(ALU | op | K, dst, 0, 0, imm))

    def alu32(self, op: int, dst: int, src: int) -> Asm:
        """dst op= src (32-bit, upper half zeroed)."""
        return self._add(Insn(ALU | op | X, dst, src))

    def be(self, dst: int, bits: int) -> Asm:
        """dst = to big-endian (network order) in its low ``bits`` (16, 32, 64)."""
        if bits not in (16, 32, 64):
            raise AsmError(f"byte swap of {bits} bits")
        return self._add(Insn(ALU | END | TO_BE, dst, 0, 0, bits))

    def ld_imm64(self, dst: int, imm: int) -> Asm:
        """dst = a 64-bit immediate (two slots)."""
        imm &= (1 << 64) - 1
        lo, hi = imm & 0xFFFFFFFF, imm >> 32
        self._add(Insn(LD | DW | IMM, dst, 0, 0, lo))
        return self._add(Insn(0, 0, 0, 0, hi))

    def ld_map_fd(self, dst: int, fd: int) -> Asm:
        """dst = the map behind ``fd`` (ld_imm64 with src BPF_PSEUDO_MAP_FD; the verifier
        replaces the fd by the map's address)."""
        self._add(Insn(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, fd))
        return self._add(Insn(0, 0, 0, 0, 0))

    # -- memory --------------------------------------------------------------------------
    def load(self, size: int, dst: int, src: int, off: int) -> Asm:
        """dst = *(size *)(src + off)."""
        return self._add(Insn(LDX | MEM | size, dst, src, off))

    def store(self, size: int, dst: int, off: int, src: int) -> Asm:
        """*(size *)(dst + off) = src."""
        return self._add(Insn(STX | MEM | size, dst, src, off))

    def store_imm(self, size: int, dst: int, off: int, imm: int) -> Asm:
        """*(size *)(dst + off) = imm."""
        return self._add(Insn(ST | MEM | size, dst, 0, off, imm))

    def atomic_add(self, size: int, dst: int, off: int, src: int, fetch: bool = False) -> Asm:
        """*(size *)(dst + off) += src, atomically; with ``fetch`` src gets the old value."""
        if size not in (W, DW):
            raise AsmError("atomic operations are 32 or 64 bits")
        return self._add(Insn(STX | ATOMIC | size, dst, src, off, ADD | (FETCH if fetch else 0)))

    # -- control -------------------------------------------------------------------------
    def jmp(self, label: str) -> Asm:
        """goto label."""
        return self._add(Insn(JMP | JA, label=label))

    def jmp_imm(self, op: int, dst: int, imm: int, label: str) -> Asm:
        """if (dst op imm) goto label (64-bit compare)."""
        return self._add(Insn(JMP | op | K, dst, 0, 0, imm, label))

    def jmp_reg(self, op: int, dst: int, src: int, label: str) -> Asm:
        """if (dst op src) goto label (64-bit compare)."""
        return self._add(Insn(JMP | op | X, dst, src, 0, 0, label))

    def jmp32_imm(self, op: int, dst: int, imm: int, label: str) -> Asm:
        """if (dst op imm) goto label, comparing the low 32 bits."""
        return self._add(Insn(JMP32 | op | K, dst, 0, 0, imm, label))

    def call(self, helper: int) -> Asm:
        """r0 = helper(r1..r5); r1-r5 are clobbered."""
        return self._add(Insn(JMP | CALL, 0, 0, 0, helper))

    def exit(self) -> Asm:
        """return r0."""
        return self._add(Insn(JMP | EXIT))

    def ret(self, value: int) -> Asm:
        """r0 = value; return."""
        return self.mov_imm(R0, value).exit()

    # -- output --------------------------------------------------------------------------
    def resolved(self) -> list[Insn]:
        """The instructions with every jump label turned into a relative offset."""
        out = []
        for i, insn in enumerate(self.insns):
            if insn.label is not None:
                if insn.label not in self.labels:
                    raise AsmError(f"jump to undefined label {insn.label!r}")
                off = self.labels[insn.label] - i - 1
                insn = Insn(insn.code, insn.dst, insn.src, off, insn.imm)
            out.append(insn)
        return out

    def assemble(self) -> bytes:
        """The program's bytes (8 per slot)."""
        return b"".join(i.encode() for i in self.resolved())


def prog_tags(code: bytes) -> tuple[bytes, bytes]:
    """The 8-byte tags a kernel may compute for ``code`` at load (``bpf_prog_calc_tag``):
    a hash of the instructions with the immediates of map-fd loads zeroed (so the tag
    does not depend on which fd the map had). SHA-1 up to Linux 6.17, SHA-256 since."""
    out = tag_input(code)
    return hashlib.sha1(out).digest()[:8], hashlib.sha256(out).digest()[:8]  # noqa: S324 - the kernel's


def tag_input(code: bytes) -> bytes:
    """``code`` with the map-fd immediates zeroed, as the kernel hashes it for the tag."""
    out = bytearray(code)
    was_ld_map = False
    for off in range(0, len(out), INSN_SIZE):
        opcode, regs = out[off], out[off + 1]
        src = regs >> 4
        rest_zero = opcode == 0 and regs == 0 and out[off + 2:off + 4] == b"\0\0"
        if not was_ld_map and opcode == LD | DW | IMM and src in (PSEUDO_MAP_FD, 2):
            was_ld_map = True
            out[off + 4:off + 8] = bytes(4)
        elif was_ld_map and rest_zero:
            was_ld_map = False
            out[off + 4:off + 8] = bytes(4)
        else:
            was_ld_map = False
    return bytes(out)


def disassemble(code: bytes) -> list[str]:
    """A plain listing of ``code`` (one line per slot: opcode, regs, off, imm) for logs and tests."""
    lines = []
    for n in range(0, len(code), INSN_SIZE):
        op, regs, off, imm = _INSN.unpack_from(code, n)
        lines.append(f"{n // INSN_SIZE:4d}: {op:02x} dst=r{regs & 15} src=r{regs >> 4} off={off} imm={imm}")
    return lines
