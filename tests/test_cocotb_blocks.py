"""Block-level cocotb benches on the generated Verilog, on Icarus and on Verilator.

Each bench (``tests/helpers/tb_<block>.py``) follows driver / monitor / model / scoreboard with
the golden model from the package, and runs as a cocotb test inside the simulator;
:class:`helpers.cocotb_runner.BlockBuilds` builds each block once per session. Icarus runs a
short random stream (it is slow on wide datapaths), Verilator a long one. ``PIMGPT_WAVES=1``
writes waveforms and prints their paths.
"""

from __future__ import annotations

import pytest
from helpers.cocotb_runner import SIMS, BlockBuilds

from pimgpt.hdl.params import preset

TINY = preset("tiny")
#: random cycles per simulator: Icarus runs ~1k cycles/s on the MAC's 512-bit beats
CYCLES = {"icarus": 300, "verilator": 20_000}


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> BlockBuilds:
    return BlockBuilds(tmp_path_factory.mktemp("cocotb"))


@pytest.mark.parametrize("sim", SIMS)
def test_bank_mac(builds: BlockBuilds, sim: str) -> None:
    builds.run(TINY, "bank_mac", sim, "helpers.tb_bank_mac", seed=7,
               env={"PIMGPT_BEATS": str(CYCLES[sim])})


#: (programs, instructions per program) per simulator
SEQ_PROGRAMS = {"icarus": (6, 16), "verilator": (24, 24)}


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("machine", ["tiny", "paper"])
def test_channel_sequencer(builds: BlockBuilds, sim: str, machine: str) -> None:
    programs, ops = SEQ_PROGRAMS[sim]
    builds.run(preset(machine), "channel_sequencer", sim, "helpers.tb_channel_sequencer",
               seed=100, env={"PIMGPT_PROGRAMS": str(programs), "PIMGPT_OPS": str(ops)})
