# SDC for the DRAM clock of machine 'tiny' (config hash 94b076f3ff88e833), written by pimgpt; regenerate with 'pimgpt constraints'.
# Blocks in this domain: bank_mac, bank_mac_p2, channel_pim, channel_sequencer, top.
# clocks.dram_mhz = 2000 MHz -> period 0.5000 ns. Assumptions: I/O paths get 20% of the period outside the block; clock uncertainty 5% of the period.
create_clock -name dram_clk -period 0.5000 [get_ports clk]
set_clock_uncertainty 0.0250 [get_clocks dram_clk]
set_input_delay -clock dram_clk 0.1000 [remove_from_collection [all_inputs] [get_ports clk]]
set_output_delay -clock dram_clk 0.1000 [all_outputs]
