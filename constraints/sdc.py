"""SDC (Synopsys Design Constraints) for the generated blocks, derived from the configuration.

Two clock domains, each a single-clock SDC for the blocks that run in it (every generated block
has one clock port ``clk`` and a synchronous reset ``rst``):

- ``asic``: the ASIC clock (``clocks.asic_mhz``): controller and vector unit;
- ``dram``: the DRAM command clock (``clocks.dram_mhz``): bank MAC units, channel sequencers and
  channel PIM blocks, and the top, which steps the ASIC side at the ratio of the two clocks.

I/O delays budget a fraction of the period to the logic outside a block (:data:`IO_BUDGET`),
and the clock uncertainty covers jitter and skew (:data:`UNCERTAINTY`); both are stated
assumptions, not properties of the machine, and are written into the file's header.
"""

from __future__ import annotations

from pimgpt.hdl.params import MachineConfig

#: Fraction of the clock period assumed spent outside the block on each input and output path.
IO_BUDGET = 0.2
#: Clock uncertainty as a fraction of the period (jitter plus skew).
UNCERTAINTY = 0.05

#: Which clock each generated block runs on.
BLOCK_DOMAIN = {
    "bank_mac": "dram", "bank_mac_p2": "dram", "channel_sequencer": "dram",
    "channel_pim": "dram", "top": "dram", "controller": "asic", "vector_unit": "asic",
}
DOMAINS = ("asic", "dram")


def clock_mhz(config: MachineConfig, domain: str) -> float:
    """The frequency of ``domain`` ("asic" or "dram") on ``config``."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown clock domain {domain!r} (known: {', '.join(DOMAINS)})")
    return config.clocks.asic_mhz if domain == "asic" else config.clocks.dram_mhz


def sdc(config: MachineConfig, domain: str) -> str:
    """The SDC text for the blocks of ``domain`` on ``config`` (deterministic)."""
    mhz = clock_mhz(config, domain)
    period = 1000.0 / mhz
    blocks = ", ".join(sorted(b for b, d in BLOCK_DOMAIN.items() if d == domain))
    key = "clocks.asic_mhz" if domain == "asic" else "clocks.dram_mhz"
    return "\n".join([
        f"# SDC for the {domain.upper()} clock of machine '{config.name}' (config hash "
        f"{config.hash[:16]}), written by pimgpt; regenerate with 'pimgpt constraints'.",
        f"# Blocks in this domain: {blocks}.",
        f"# {key} = {mhz:g} MHz -> period {period:.4f} ns. Assumptions: I/O paths get "
        f"{IO_BUDGET:.0%} of the period outside the block; clock uncertainty "
        f"{UNCERTAINTY:.0%} of the period.",
        f"create_clock -name {domain}_clk -period {period:.4f} [get_ports clk]",
        f"set_clock_uncertainty {period * UNCERTAINTY:.4f} [get_clocks {domain}_clk]",
        f"set_input_delay -clock {domain}_clk {period * IO_BUDGET:.4f} "
        f"[remove_from_collection [all_inputs] [get_ports clk]]",
        f"set_output_delay -clock {domain}_clk {period * IO_BUDGET:.4f} [all_outputs]",
        "",
    ])
