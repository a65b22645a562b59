"""critifusion-tui: CritiFusion (multi-LLM tags, VLM critique, SpecFusion) in the terminal."""

__version__ = "0.1.0"
