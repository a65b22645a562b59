"""UI-free engine: prompt rules, CritiCore stages, diffusion, SpecFusion, pipeline, run store.

Nothing in here imports textual; torch and diffusers load lazily inside the diffusion room.
"""
