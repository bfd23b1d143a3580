# SDC for the ASIC clock of machine 'tiny' (config hash 94b076f3ff88e833), written by pimgpt; regenerate with 'pimgpt constraints'.
# Blocks in this domain: controller, vector_unit.
# clocks.asic_mhz = 1000 MHz -> period 1.0000 ns. Assumptions: I/O paths get 20% of the period outside the block; clock uncertainty 5% of the period.
create_clock -name asic_clk -period 1.0000 [get_ports clk]
set_clock_uncertainty 0.0500 [get_clocks asic_clk]
set_input_delay -clock asic_clk 0.2000 [remove_from_collection [all_inputs] [get_ports clk]]
set_output_delay -clock asic_clk 0.2000 [all_outputs]
