"""Evaluation: the paper's four human-aligned metrics (SPEC 9) on run folders.

One module per metric (``pickscore``, ``hpsv2``, ``imagereward``, ``aesthetic``), each a
:class:`~critifusion_tui.eval.base.Scorer` with ``score(images, prompts) -> list[float]``;
``scorers`` resolves a metric's weights and loads it once; ``runs`` reads and writes the scores
in run folders; ``stats`` and ``report`` summarise them; ``command`` is ``critifusion eval``.
torch and transformers are imported inside functions only, so importing this package is cheap.
"""

METRICS = ("pickscore", "hpsv2", "imagereward", "aesthetic")
