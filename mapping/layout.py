"""Placement of a GPT onto the PIM banks and the ASIC vector memory.

Every DRAM region is *striped*: it occupies the same element addresses in every bank, so one
all-bank command (``MAC_ABK``) works on all banks at once. Three placements implement the
paper's mapping techniques:

- :class:`MatrixPlacement` (weights): output neuron ``j`` lives in global bank ``j % banks``,
  group ``j // banks``. The input dimension is cut into chunks the global buffer holds
  (tiling; the ASIC adds the chunk partial sums), and the chunk segments of consecutive groups
  are packed back to back so rows are filled completely (no per-neuron row padding).
- :class:`KPlacement` (K cache, row-major): token ``t`` in bank ``t % banks``; one token's heads
  are concatenated in a row (several tokens per row when they fit), space for ``max_tokens``
  reserved up front.
- :class:`VPlacement` (V cache, column-major): a row holds one feature across consecutive
  tokens; heads are spread over channels, a head's features over the channel's banks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pimgpt.errors import PimgptError
from pimgpt.hdl.params import BF16_BYTES, MachineConfig


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


@dataclass
class Region:
    """A striped DRAM region: element addresses ``[start, start + size)`` in every bank."""

    name: str
    kind: str  # "matrix", "k_cache", "v_cache", "vectors"
    start: int
    size: int
    used: int = 0  # elements of real data per bank (row utilisation)


class DramAllocator:
    """Row-aligned bump allocation of striped regions."""

    def __init__(self, config: MachineConfig):
        self.config = config
        self.row = config.geometry.row_elems
        self.limit = config.geometry.bank_elems
        self.top = 0
        self.regions: list[Region] = []

    def alloc(self, name: str, kind: str, size: int, used: int | None = None) -> Region:
        start = self.top
        self.top = start + round_up(max(size, 1), self.row)
        region = Region(name, kind, start, size, size if used is None else used)
        self.regions.append(region)
        return region

    def check_capacity(self, what: str) -> None:
        if self.top > self.limit:
            g = self.config.geometry
            need = self.top * g.banks * BF16_BYTES
            raise PimgptError(
                f"{what} needs {need / 2**20:.1f} MiB of PIM memory "
                f"({self.top} BF16 values per bank), but machine '{self.config.name}' has "
                f"{g.capacity_bytes / 2**20:.1f} MiB ({self.limit} per bank)")


class VmemAllocator:
    """Bump allocation of ASIC vector-memory buffers (16-word aligned, zero-initialised)."""

    def __init__(self, config: MachineConfig):
        self.limit = config.asic.vmem_words
        self.top = 0
        self.buffers: dict[str, tuple[int, int]] = {}

    def alloc(self, name: str, words: int) -> int:
        addr = self.top
        self.top = round_up(addr + words, 16)
        self.buffers[name] = (addr, words)
        return addr

    def fits(self, words: int) -> bool:
        """Whether one more buffer of ``words`` words fits."""
        return self.top + words <= self.limit

    def check_capacity(self, what: str, vmem_words: int) -> None:
        if self.top > self.limit:
            raise PimgptError(f"{what} needs {self.top} words of ASIC vector memory, but the "
                              f"machine has {vmem_words} (asic.vmem_words)")


@dataclass
class MatrixPlacement:
    """A weight matrix ``y = x @ W`` (W is ``[d_in, d_out]``) placed for all-bank MACs."""

    region: Region
    d_in: int
    d_out: int
    banks: int
    chunk: int  # input elements per global-buffer load
    lanes: int
    #: 0: segments back to back, rows filled (the paper's concatenation); else the row length,
    #: and every segment starts a row (the mapping without it, for the study)
    row_align: int = 0
    chunks: list[tuple[int, int, int, int]] = field(default_factory=list)
    # per chunk: (first input element, length, padded length, offset in region)

    def __post_init__(self) -> None:
        off = 0
        for k in range(ceil_div(self.d_in, self.chunk)):
            lo = k * self.chunk
            length = min(self.chunk, self.d_in - lo)
            seg = round_up(length, self.lanes)
            self.chunks.append((lo, length, seg, off))
            off += self.groups * self._stride(seg)

    def _stride(self, seg: int) -> int:
        return round_up(seg, self.row_align) if self.row_align else seg

    def stride(self, k: int) -> int:
        """Elements from one group's segment of chunk ``k`` to the next group's."""
        return self._stride(self.chunks[k][2])

    @property
    def groups(self) -> int:
        """Row passes per chunk: output neurons per bank."""
        return ceil_div(self.d_out, self.banks)

    @property
    def out_words(self) -> int:
        """Vector-memory words the read-outs fill (padded to whole groups)."""
        return self.groups * self.banks

    @staticmethod
    def size_for(d_in: int, d_out: int, banks: int, chunk: int, lanes: int,
                 row_align: int = 0) -> int:
        probe = MatrixPlacement(Region("", "", 0, 0), d_in, d_out, banks, chunk, lanes,
                                row_align)
        return sum(probe.groups * probe.stride(k) for k in range(len(probe.chunks)))

    def segment_addr(self, k: int, group: int) -> int:
        """Bank element address of chunk ``k`` of group ``group``."""
        lo, length, seg, off = self.chunks[k]
        return self.region.start + off + group * self.stride(k)

    def fill(self, image: np.ndarray, wt_bits: np.ndarray) -> None:
        """Write ``wt_bits`` (``[d_out, d_in]`` BF16 bit patterns) into the image."""
        g, banks = self.groups, self.banks
        for k, (lo, length, seg, off) in enumerate(self.chunks):
            stride = self.stride(k)
            block = np.zeros((g * banks, stride), np.uint16)
            block[:self.d_out, :length] = wt_bits[:, lo:lo + length]
            # neuron j = group * banks + bank  ->  bank-major, groups one stride apart
            per_bank = block.reshape(g, banks, stride).transpose(1, 0, 2).reshape(banks,
                                                                                g * stride)
            a = self.region.start + off
            image[:, a:a + g * stride] = per_bank


@dataclass
class KPlacement:
    """K cache of one layer: token-major rows, heads concatenated (row-major K)."""

    region: Region
    n_head: int
    d_head: int
    banks: int
    row_elems: int
    lanes: int
    #: a token's heads concatenated in its record, several tokens to a row where they fit (the
    #: paper's layout); False: every head of every token in a row of its own (the mapping
    #: without head concatenation, for the study)
    concat: bool = True

    @property
    def dhp(self) -> int:
        """Head segment padded to whole columns."""
        return round_up(self.d_head, self.lanes)

    @property
    def tokens_per_row(self) -> int:
        """Tokens sharing one row (0 when one token needs several rows, or without packing)."""
        return self.row_elems // (self.n_head * self.dhp) if self.concat else 0

    @property
    def heads_per_row(self) -> int:
        return self.row_elems // self.dhp if self.concat else 1

    @property
    def rows_per_token(self) -> int:
        return ceil_div(self.n_head, self.heads_per_row)

    @staticmethod
    def size_for(max_tokens: int, n_head: int, d_head: int, banks: int, row_elems: int,
                 lanes: int, concat: bool = True) -> int:
        probe = KPlacement(Region("", "", 0, 0), n_head, d_head, banks, row_elems, lanes,
                           concat)
        slots = ceil_div(max_tokens, banks)
        if probe.tokens_per_row:
            return ceil_div(slots, probe.tokens_per_row) * row_elems
        return slots * probe.rows_per_token * row_elems

    def head_offset(self, h: int) -> int:
        """Address of head ``h`` relative to the start of its token's record."""
        if self.tokens_per_row:
            return h * self.dhp
        return (h // self.heads_per_row) * self.row_elems + (h % self.heads_per_row) * self.dhp

    def slot_base(self, slot: int) -> int:
        """Bank address of a token slot's record (also computed by scalar code at run time)."""
        if self.tokens_per_row:
            tpr = self.tokens_per_row
            return (self.region.start + (slot // tpr) * self.row_elems
                    + (slot % tpr) * self.n_head * self.dhp)
        return self.region.start + slot * self.rows_per_token * self.row_elems


@dataclass
class VPlacement:
    """V cache of one layer: each row holds one feature over ``tokens_per_row`` tokens."""

    region: Region
    n_head: int
    d_head: int
    channels: int
    banks_per_channel: int
    row_elems: int
    tokens_per_row: int  # min(row, global buffer): a row's tokens must fit the buffer
    max_tokens: int

    @property
    def rounds(self) -> int:
        """Head rounds: each round gives every channel one head."""
        return ceil_div(self.n_head, self.channels)

    @property
    def feature_slots(self) -> int:
        """Row passes per head per token chunk: a head's features spread over the banks."""
        return ceil_div(self.d_head, self.banks_per_channel)

    @property
    def token_chunks(self) -> int:
        return ceil_div(self.max_tokens, self.tokens_per_row)

    @staticmethod
    def size_for(n_head: int, d_head: int, channels: int, banks_per_channel: int,
                 row_elems: int, tokens_per_row: int, max_tokens: int) -> int:
        return (ceil_div(n_head, channels) * ceil_div(d_head, banks_per_channel)
                * ceil_div(max_tokens, tokens_per_row) * row_elems)

    def row_addr(self, rnd: int, fslot: int, tchunk: int) -> int:
        return self.region.start + ((rnd * self.feature_slots + fslot) * self.token_chunks
                                    + tchunk) * self.row_elems

    def feature_home(self, h: int, i: int) -> tuple[int, int, int]:
        """(global bank, round, feature slot) of feature ``i`` of head ``h``."""
        c, rnd = h % self.channels, h // self.channels
        return c * self.banks_per_channel + i % self.banks_per_channel, rnd, \
            i // self.banks_per_channel


@dataclass
class VectorPlacement:
    """Small vectors (biases, LayerNorm parameters), each split over the channels."""

    region: Region
    #: name -> pieces (bank, address, offset in the vector, length)
    homes: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
