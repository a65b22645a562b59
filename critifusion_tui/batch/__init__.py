"""Prompt batches across processes: claims in the output folder, ranks and devices from the
launcher, one summary of the whole batch. `critifusion run --prompts` runs here."""
