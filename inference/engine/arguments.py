"""The model's own arguments, checked before a fit: :func:`check_model_arguments`.

:func:`inference.fit` passes every positional argument and every keyword that is not one of its
own options to the model. A misspelt option (``max_step=300``) would then reach the model and
fail deep inside NumPyro's tracing; here it is refused at once, in a sentence that names the
argument and the closest fit option or model argument.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["check_model_arguments"]


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - only for the message
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= 40 else text[:37] + "..."


def _model_name(model: Callable[..., Any]) -> str:
    name = getattr(model, "__name__", None)
    if not isinstance(name, str):
        name = getattr(getattr(model, "func", None), "__name__", None)  # functools.partial
    return name if isinstance(name, str) else type(model).__name__


def _fit_options() -> list[str]:
    from .fit import fit

    return [
        p.name
        for p in inspect.signature(fit).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]


def check_model_arguments(model: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Refuse arguments that ``model`` cannot take, before the fit traces it.

    Parameters
    ----------
    model : callable
        The model; its signature is read with :func:`inspect.signature`. A model whose
        signature cannot be read, or that takes ``*args`` / ``**kwargs``, is checked only
        where it can be.
    args : tuple
        The positional arguments given to ``fit`` after the model.
    kwargs : mapping
        The keywords given to ``fit`` that are not fit options.

    Raises
    ------
    TypeError
        For a keyword the model does not take (with the closest fit option or model
        argument), more positional arguments than the model takes, an argument given both
        by position and by keyword, or a required model argument that is missing.
    """
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):
        return
    params = list(signature.parameters.values())
    kinds = {p.kind for p in params}
    shown = f"{_model_name(model)}{signature}"
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        accepted = [
            p.name
            for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        for key, value in kwargs.items():
            if key in accepted:
                continue
            options = _fit_options()
            close = difflib.get_close_matches(key, options + accepted, n=1)
            hint = f"; did you mean {close[0]}?" if close else (
                f"; the fit options are {', '.join(options)}" if not accepted else
                f"; the model takes {', '.join(accepted)}"
            )
            raise TypeError(
                f"fit() got {key}={_shown(value)}, which is neither a fit option nor an argument of {shown}{hint}"
            )
    if inspect.Parameter.VAR_POSITIONAL not in kinds:
        positional = [
            p.name
            for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        if len(args) > len(positional):
            raise TypeError(
                f"fit() got {len(args)} positional argument{'s' if len(args) != 1 else ''} for the model, "
                f"but {shown} takes {'at most ' + str(len(positional)) if positional else 'none'}; "
                "give the model's data as its arguments after the model, and fit options by keyword "
                "(e.g. fit(model, t, y=y, max_steps=300))"
            )
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        message = str(err)
        if "multiple values" in message:
            raise TypeError(
                f"fit() got an argument of {shown} both by position and by keyword ({message}); give it once"
            ) from None
        if "missing" in message:
            raise TypeError(
                f"fit() got no value for a required argument of {shown} ({message}); pass the model's data "
                f"after the model, e.g. fit(model, data) or fit(model, y=data)"
            ) from None
