"""pimgpt: compile GPT checkpoints for the PIM-GPT accelerator, simulate them, generate its RTL.

Subpackages (one folder each at the repository root):

- ``pimgpt.hdl``: the machine description (parameters, ISA) and, later, the Amaranth components;
- ``pimgpt.sim``: golden numerics, the functional machine model, the float32 reference;
- ``pimgpt.mapping``: checkpoints, the GPT graph, placement, code generation, ``.pimbin`` I/O;
- ``pimgpt.gen``: Verilog generation and synthesis reports.
"""

from .errors import PimgptError

__all__ = ["PimgptError"]
__version__ = "0.1.0"
