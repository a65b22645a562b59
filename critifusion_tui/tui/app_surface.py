"""What the app's mixins (tui/engine_view.py, tui/rounds_view.py) use of the app itself.

Only for the type checker: at run time :class:`AppSurface` is ``object``, and the methods are
textual's ``App`` and ``CritiFusionApp``'s own, found through the app's class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    class AppSurface:
        active_run: Any

        def query_one(self, *args: Any, **kwargs: Any) -> Any: ...
        def notify(
            self,
            message: str,
            *,
            title: str = "",
            severity: Any = "information",
            timeout: float | None = None,
            markup: bool = True,
        ) -> None: ...
        def bell(self) -> None: ...
        def _hint(self, text: str, *, error: bool = False) -> None: ...
        def _refresh_keys(self) -> None: ...

else:
    AppSurface = object
