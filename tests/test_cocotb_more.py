"""More block-level cocotb benches on the generated Verilog (issue 5, deliverable 2): the
vector unit, the channel PIM block and the controller, each following driver / monitor / model /
scoreboard with the golden model from the package (see the bench modules' docstrings for what
each drives and checks).

They run on Icarus by default (quick to build; these blocks are large, and Verilator's build
of them takes minutes); ``PIMGPT_COCOTB_SIMS=icarus,verilator`` adds Verilator.
``PIMGPT_WAVES=1`` writes waveforms and prints their paths. A failure names its seed (the
pytest parameter and the cocotb log).
"""

from __future__ import annotations

import os

import pytest
from helpers.cocotb_runner import SIMS, BlockBuilds

from pimgpt.hdl.params import preset

TINY = preset("tiny")
SIMS_RUN = [s for s in os.environ.get("PIMGPT_COCOTB_SIMS", "icarus").split(",") if s in SIMS]
#: random vector ops per simulator
VECTOR_OPS = {"icarus": 60, "verilator": 400}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> BlockBuilds:
    return BlockBuilds(tmp_path_factory.mktemp("cocotb-more"))


@pytest.mark.parametrize("sim", SIMS_RUN)
@pytest.mark.parametrize("seed", [11])
def test_vector_unit(builds: BlockBuilds, sim: str, seed: int) -> None:
    """Directed and random vector ops with idle gaps, against VectorIssue and the functional
    machine (tests/helpers/tb_vector_unit.py)."""
    builds.run(TINY, "vector_unit", sim, "helpers.tb_vector_unit", seed=seed,
               env={"PIMGPT_OPS": str(VECTOR_OPS[sim]), "PIMGPT_WORDS": "1024",
                    "PIMGPT_IDLE": "0.3"})


#: (commands, idle-gap choices, fraction of unconstrained commands) per case and simulator;
#: Icarus runs the channel at only ~15-50 cycles/s (four MAC units, 256-bit columns), so its
#: streams are short
CHANNEL_CASES = {
    # legal, back to back and idle stretches
    "legal-gaps": {"icarus": 150, "verilator": 4000, "gaps": "0,0,0,0,1,2,3,9", "bad": 0.0},
    # every cycle a command, a few drawn without regard to the state (protocol errors)
    "b2b-some-illegal": {"icarus": 100, "verilator": 3000, "gaps": "0", "bad": 0.05},
}


@pytest.mark.parametrize("sim", SIMS_RUN)
@pytest.mark.parametrize("case,seed", [("legal-gaps", 21), ("b2b-some-illegal", 22)])
def test_channel_pim(builds: BlockBuilds, sim: str, case: str, seed: int) -> None:
    """Random command streams with idle gaps: every o_rd / o_mac value and cycle, the error
    count and the arrays against ChannelModel (tests/helpers/tb_channel_pim.py)."""
    c = CHANNEL_CASES[case]
    builds.run(TINY, "channel_pim", sim, "helpers.tb_channel_pim", seed=seed,
               env={"PIMGPT_CMDS": str(c[sim]), "PIMGPT_GAPS": c["gaps"],
                    "PIMGPT_BAD": str(c["bad"])})


#: (programs, instructions per program) per simulator
CONTROLLER_PROGRAMS = {"icarus": (40, 40), "verilator": (200, 60)}


@pytest.mark.parametrize("sim", SIMS_RUN)
@pytest.mark.parametrize("seed", [31])
def test_controller_scalar(builds: BlockBuilds, sim: str, seed: int) -> None:
    """Random scalar / control programs (loops, skips, SYNC): registers against the functional
    machine, the cycles counter against the cycle simulator; MAC programs: every channel-queue
    entry against channel_op under random backpressure (tests/helpers/tb_controller.py)."""
    programs, length = CONTROLLER_PROGRAMS[sim]
    builds.run(TINY, "controller", sim, "helpers.tb_controller", seed=seed,
               env={"PIMGPT_PROGRAMS": str(programs), "PIMGPT_LENGTH": str(length)})
