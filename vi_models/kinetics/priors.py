"""Safe parsing of prior text, such as ``"LogNormal(log(0.5), 1)"``, into NumPyro.

Priors come from command lines and configuration files, so the text is never
evaluated as Python. It is parsed with :func:`ast.parse` and only a whitelist of
nodes is walked: one call to a distribution from :data:`DISTRIBUTIONS`, whose
positional and keyword arguments are numbers built from numeric constants, unary
``+``/``-``, the binary operators ``+ - * / **``, the functions ``log``, ``exp``,
``sqrt`` and ``log10``, and the names ``pi`` and ``e``.

Examples
--------
>>> d = parse_prior("LogNormal(log(0.5), 1)")
>>> describe_prior(d)
'LogNormal(loc=-0.693, scale=1)'
>>> describe_prior(parse_prior("TruncatedNormal(0, 2, low=0)"))
'TruncatedNormal(loc=0, scale=2, low=0)'
"""

from __future__ import annotations

import ast
import difflib
import inspect
import math
from collections.abc import Callable

import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.truncated import (
    LeftTruncatedDistribution,
    RightTruncatedDistribution,
    TwoSidedTruncatedDistribution,
)

__all__ = ["DISTRIBUTIONS", "PriorError", "as_prior", "check_positive", "describe_prior", "parse_prior"]


class PriorError(ValueError):
    """A prior that cannot be read or built.

    Parameters
    ----------
    message : str
        The full message: parameter, text, problem and fix.
    name : str or None, optional
        The parameter the prior is for, when known.
    text : str or None, optional
        The prior text, when the prior was given as text.

    Attributes
    ----------
    name, text
        As given.
    """

    def __init__(
        self, message: str, *, name: str | None = None, text: str | None = None
    ) -> None:
        super().__init__(message)
        self.name = name
        self.text = text

    def __reduce__(self):
        return (_rebuild_prior_error, (self.args[0], self.name, self.text))


def _rebuild_prior_error(message, name, text):
    """Rebuild a :class:`PriorError` when unpickling."""
    return PriorError(message, name=name, text=text)


#: Distributions a prior may name. ``TruncatedNormal`` is NumPyro's factory
#: function (it returns a truncated distribution), the others are classes.
DISTRIBUTIONS: dict[str, Callable[..., dist.Distribution]] = {
    "Normal": dist.Normal,
    "LogNormal": dist.LogNormal,
    "HalfNormal": dist.HalfNormal,
    "HalfCauchy": dist.HalfCauchy,
    "Cauchy": dist.Cauchy,
    "StudentT": dist.StudentT,
    "Exponential": dist.Exponential,
    "Gamma": dist.Gamma,
    "InverseGamma": dist.InverseGamma,
    "Uniform": dist.Uniform,
    "Beta": dist.Beta,
    "TruncatedNormal": dist.TruncatedNormal,
    "LogUniform": dist.LogUniform,
}

_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "sqrt": math.sqrt,
}
_CONSTANTS: dict[str, float] = {"e": math.e, "pi": math.pi}
_BINARY = {
    ast.Add: ("+", lambda a, b: a + b),
    ast.Sub: ("-", lambda a, b: a - b),
    ast.Mult: ("*", lambda a, b: a * b),
    ast.Div: ("/", lambda a, b: a / b),
    ast.Pow: ("**", lambda a, b: a**b),
}
# Argument constraints of TruncatedNormal, a factory function without its own.
_TRUNCATED_NORMAL_CONSTRAINTS = {
    "loc": constraints.real,
    "scale": constraints.positive,
    "low": constraints.real,
    "high": constraints.real,
}
_MAX_TEXT = 2000
_EXAMPLE = "e.g. 'LogNormal(0, 1)' or 'Normal(loc=0, scale=2)'"
_ALLOWED = (
    "only numbers, + - * / **, the functions "
    f"{', '.join(sorted(_FUNCTIONS))} and the names {', '.join(sorted(_CONSTANTS))} "
    "may appear in the arguments"
)


class _Fail(Exception):
    """Internal: a problem and its fix, turned into a PriorError by the caller."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def _known() -> str:
    return ", ".join(sorted(DISTRIBUTIONS))


def _fmt(x: float) -> str:
    """Format a number compactly: 3 significant digits, no trailing '.0'."""
    return f"{x:.3g}"


def _source(node: ast.AST, text: str) -> str:
    return ast.get_source_segment(text, node) or ast.dump(node)


def _evaluate(node: ast.AST, text: str) -> float:
    """Evaluate a whitelisted numeric expression node to a finite float."""
    value = _evaluate_node(node, text)
    if isinstance(value, complex) or not math.isfinite(value):
        raise _Fail(
            f"{_source(node, text)!r} is not a finite real number",
            "use finite numbers as arguments",
        )
    return value


def _evaluate_node(node: ast.AST, text: str) -> float:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Fail(
                f"{_source(node, text)} is not a number",
                "arguments must be numbers, " + _EXAMPLE,
            )
        # Floats from the start: '9**9**9' overflows at once instead of building
        # an enormous integer.
        return float(value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _evaluate_node(node.operand, text)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        symbol, op = _BINARY[type(node.op)]
        left = _evaluate_node(node.left, text)
        right = _evaluate_node(node.right, text)
        try:
            value = op(left, right)
        except ZeroDivisionError:
            raise _Fail(
                f"{_source(node, text)!r} divides by zero", "change the divisor"
            ) from None
        except OverflowError:
            raise _Fail(
                f"{_source(node, text)!r} is too large for a float",
                "use a smaller number",
            ) from None
        if isinstance(value, complex):
            raise _Fail(
                f"{_source(node, text)!r} is not a real number",
                "raise only non-negative numbers to fractional powers",
            )
        return value
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in _FUNCTIONS:
            if (
                node.keywords
                or len(node.args) != 1
                or any(isinstance(a, ast.Starred) for a in node.args)
            ):
                raise _Fail(
                    f"{func.id}() takes exactly one number, "
                    f"got {_source(node, text)!r}",
                    f"write e.g. '{func.id}(2)'",
                )
            arg = _evaluate_node(node.args[0], text)
            try:
                return _FUNCTIONS[func.id](arg)
            except ValueError:
                raise _Fail(
                    f"{_source(node, text)!r} is undefined ({func.id} of {_fmt(arg)})",
                    "take log, log10 and sqrt of positive numbers only",
                ) from None
            except OverflowError:
                raise _Fail(
                    f"{_source(node, text)!r} is too large for a float",
                    "use a smaller argument",
                ) from None
        if isinstance(func, ast.Name) and func.id in DISTRIBUTIONS:
            raise _Fail(
                f"the distribution {func.id} appears inside another distribution",
                "arguments must be numbers, " + _EXAMPLE,
            )
        if isinstance(func, ast.Name):
            raise _Fail(
                f"unknown function {func.id!r}",
                f"allowed functions: {', '.join(sorted(_FUNCTIONS))}",
            )
        raise _Fail(
            f"{_source(func, text)!r} cannot be called",
            _ALLOWED,
        )
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if node.id in _FUNCTIONS:
            raise _Fail(
                f"{node.id!r} is a function and needs an argument",
                f"write e.g. '{node.id}(2)'",
            )
        raise _Fail(
            f"unknown name {node.id!r}",
            f"allowed names: {', '.join(sorted(_CONSTANTS))}; arguments must be "
            "numbers",
        )
    if isinstance(node, ast.Attribute):
        raise _Fail(
            f"attribute access {_source(node, text)!r} is not allowed",
            _ALLOWED,
        )
    raise _Fail(f"{_source(node, text)!r} is not allowed", _ALLOWED)


def _usage(name: str) -> str:
    """Return the call signature of a distribution, e.g. 'Normal(loc=0, scale=1)'."""
    parts = []
    star = False
    for p in inspect.signature(DISTRIBUTIONS[name]).parameters.values():
        if p.name == "validate_args":
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.default is inspect.Parameter.empty:
            parts.append(p.name)
        elif isinstance(p.default, float):
            parts.append(f"{p.name}={_fmt(p.default)}")
        else:
            parts.append(f"{p.name}={p.default!r}")
    return f"{name}({', '.join(parts)})"


def _constraint_words(c: constraints.Constraint) -> str:
    """Describe a NumPyro constraint in words."""
    kinds = {k.__name__.lstrip("_") for k in type(c).__mro__}
    lower = getattr(c, "lower_bound", None)
    upper = getattr(c, "upper_bound", None)
    if "Real" in kinds:
        return "a finite real number"
    if lower is not None and upper is not None:
        return f"between {_fmt(float(lower))} and {_fmt(float(upper))}"
    if lower is not None:
        if "GreaterThanEq" in kinds:
            return f"at least {_fmt(float(lower))}"
        return f"greater than {_fmt(float(lower))}"
    if upper is not None:
        return f"less than {_fmt(float(upper))}"
    return repr(c)


def _build(name: str, args: list[float], kwargs: dict[str, float]) -> dist.Distribution:
    """Check the arguments of distribution ``name`` and build it."""
    factory = DISTRIBUTIONS[name]
    usage = _usage(name)
    signature = inspect.signature(factory)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as err:
        raise _Fail(
            f"wrong arguments for {name}: {err}", f"{name} takes {usage}"
        ) from None
    given = dict(bound.arguments)
    bound.apply_defaults()
    values = {k: v for k, v in bound.arguments.items() if k != "validate_args"}

    checks = getattr(factory, "arg_constraints", None)
    if name == "TruncatedNormal":
        checks = _TRUNCATED_NORMAL_CONSTRAINTS
    for arg, value in values.items():
        constraint = (checks or {}).get(arg)
        if value is None or constraint is None:
            continue
        if isinstance(constraint, type(constraints.dependent)):
            continue
        if not bool(constraint(np.asarray(value, dtype=float))):
            raise _Fail(
                f"the argument {arg!r} of {name} must be "
                f"{_constraint_words(constraint)}, got {_fmt(value)}",
                f"{name} takes {usage}",
            )
    low, high = values.get("low"), values.get("high")
    if low is not None and high is not None and not low < high:
        raise _Fail(
            f"the argument 'low' of {name} must be less than 'high', "
            f"got low={_fmt(low)}, high={_fmt(high)}",
            f"{name} takes {usage}",
        )

    try:
        return factory(**given, validate_args=True)
    except (ValueError, TypeError) as err:
        raise _Fail(
            f"{name} rejected its arguments: {err}", f"{name} takes {usage}"
        ) from None


def _parse(text: str) -> dist.Distribution:
    """Parse prior text; raise _Fail on any problem."""
    if len(text) > _MAX_TEXT:
        raise _Fail(
            f"the text is {len(text)} characters long",
            f"a prior is one short distribution call, {_EXAMPLE}",
        )
    stripped = text.strip()
    if not stripped:
        raise _Fail("the text is empty", f"write a distribution, {_EXAMPLE}")
    try:
        tree = ast.parse(stripped, mode="eval")
    except SyntaxError as err:
        where = f" (column {err.offset})" if err.offset else ""
        raise _Fail(
            f"it is not a distribution call: {err.msg}{where}",
            f"write a distribution, {_EXAMPLE}",
        ) from None
    except ValueError as err:  # e.g. a null byte in the text
        raise _Fail(
            f"it cannot be read: {err}", f"write a distribution, {_EXAMPLE}"
        ) from None
    except (RecursionError, MemoryError):
        raise _Fail(
            "it is nested too deeply", f"write a distribution, {_EXAMPLE}"
        ) from None
    body = tree.body
    if not isinstance(body, ast.Call):
        raise _Fail(
            f"{stripped!r} is not a distribution call",
            f"write a distribution, {_EXAMPLE}; known distributions: {_known()}",
        )
    func = body.func
    if isinstance(func, ast.Attribute) and func.attr in DISTRIBUTIONS:
        raise _Fail(
            f"attribute access {_source(func, stripped)!r} is not allowed",
            f"write the distribution name alone, e.g. '{func.attr}(...)'",
        )
    if not isinstance(func, ast.Name):
        raise _Fail(
            f"{_source(func, stripped)!r} is not a distribution name",
            f"known distributions: {_known()}",
        )
    name = func.id
    if name not in DISTRIBUTIONS:
        lower = {k.lower(): k for k in DISTRIBUTIONS}
        close = [lower[name.lower()]] if name.lower() in lower else []
        close += difflib.get_close_matches(name, list(DISTRIBUTIONS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _Fail(
            f"unknown distribution {name!r}",
            f"{hint}known distributions: {_known()}",
        )
    args: list[float] = []
    for node in body.args:
        if isinstance(node, ast.Starred):
            raise _Fail(f"{_source(node, stripped)!r} is not allowed", _ALLOWED)
        args.append(_evaluate(node, stripped))
    kwargs: dict[str, float] = {}
    for kw in body.keywords:
        if kw.arg is None:
            raise _Fail(f"{_source(kw, stripped)!r} is not allowed", _ALLOWED)
        if kw.arg == "validate_args":
            raise _Fail(
                "validate_args is not a distribution argument here (arguments are "
                "always validated)",
                f"{name} takes {_usage(name)}",
            )
        kwargs[kw.arg] = _evaluate(kw.value, stripped)
    return _build(name, args, kwargs)


def _error(fail: _Fail, text: str, name: str | None) -> PriorError:
    subject = f"prior for {name!r}" if name is not None else "prior"
    message = f"invalid {subject} {text!r}: {fail.problem}"
    if fail.fix:
        message += f"; {fail.fix}"
    return PriorError(message, name=name, text=text)


def _parse_named(text: str, name: str | None) -> dist.Distribution:
    try:
        return _parse(text)
    except _Fail as fail:
        raise _error(fail, text, name) from None


def parse_prior(text: str) -> dist.Distribution:
    """Parse prior text into a NumPyro distribution, without evaluating Python.

    Parameters
    ----------
    text : str
        One call to a distribution of :data:`DISTRIBUTIONS`, with positional or
        keyword arguments, e.g. ``"LogNormal(log(0.5), 1)"`` or
        ``"Normal(loc=0, scale=2)"``. Arguments may use numbers,
        ``+ - * / **``, ``log``, ``exp``, ``sqrt``, ``log10``, ``pi`` and ``e``.

    Returns
    -------
    numpyro.distributions.Distribution
        Built with Python float arguments and ``validate_args=True``.

    Raises
    ------
    PriorError
        For text that is not such a call, an unknown distribution, function or
        name, wrong arguments, or argument values outside their constraints.
    TypeError
        If ``text`` is not a str.

    Examples
    --------
    >>> d = parse_prior("LogNormal(log(0.5), 1)")
    >>> round(float(d.loc), 4), float(d.scale)
    (-0.6931, 1.0)
    """
    if not isinstance(text, str):
        raise TypeError(f"prior text must be a str, got {type(text).__name__}")
    return _parse_named(text, None)


def as_prior(spec, *, name: str, positive: bool = True) -> dist.Distribution:
    """Turn a prior specification into a NumPyro distribution.

    Parameters
    ----------
    spec : numpyro.distributions.Distribution or str
        A distribution (returned as is) or prior text (see :func:`parse_prior`).
    name : str
        The parameter the prior is for; used in error messages.
    positive : bool
        Whether the parameter is positive, as rate constants, noise scales and
        initial concentrations are (the default): a prior that gives values at or
        below zero a probability (``Normal``, ``Cauchy``, ``StudentT``, a
        ``Uniform`` or ``TruncatedNormal`` reaching below 0) is then refused (see
        :func:`check_positive`). ``False`` for a parameter that may be negative.

    Returns
    -------
    numpyro.distributions.Distribution
        The prior.

    Raises
    ------
    PriorError
        If ``spec`` is neither, the text cannot be parsed, or the support does
        not fit a positive parameter; the message names the parameter.
    """
    if isinstance(spec, dist.Distribution):
        prior = spec
    elif isinstance(spec, str):
        prior = _parse_named(spec, name)
    else:
        raise PriorError(
            f"invalid prior for {name!r}: expected a numpyro distribution or text such as "
            f"'LogNormal(0, 1)', got {type(spec).__name__} {spec!r}",
            name=name,
        )
    if positive:
        check_positive(prior, name=name, text=spec if isinstance(spec, str) else None)
    return prior


def _role(name: str) -> str:
    if name == "sigma" or name.startswith("sigma_"):
        return "a noise scale"
    return "a positive parameter (a rate constant, a noise scale or an initial concentration)"


def _admits_nonpositive(prior: dist.Distribution) -> bool:
    """Whether ``prior`` gives values at or below zero a probability (False when it cannot be told)."""
    if isinstance(prior, dist.Delta):
        return not bool(np.all(np.asarray(prior.v) > 0))
    support = prior.support
    while hasattr(support, "base_constraint"):  # independent(...) wraps the constraint of one element
        support = support.base_constraint
    lower = getattr(support, "lower_bound", None)
    if lower is not None:
        try:
            return not bool(np.all(np.asarray(lower, dtype=float) >= 0))
        except (TypeError, ValueError):
            return False
    kinds = {k.__name__.lstrip("_") for k in type(support).__mro__}
    return bool(kinds & {"Real", "RealVector", "LessThan", "LessThanEq"})


def check_positive(prior: dist.Distribution, *, name: str, text: str | None = None) -> None:
    """Refuse a prior whose support reaches zero or below for the positive parameter ``name``.

    Raises
    ------
    PriorError
        Naming the parameter, the prior and positive alternatives.
    """
    if not _admits_nonpositive(prior):
        return
    try:
        shown = text if text is not None else describe_prior(prior)
    except Exception:  # noqa: BLE001 - only for the message
        shown = type(prior).__name__
    if name == "sigma" or name.startswith("sigma_"):
        fix = "use a prior on positive numbers such as 'HalfNormal(1)' or 'LogNormal(log(0.1), 1)'"
    else:
        fix = (
            "use a prior on positive numbers such as 'LogNormal(log(0.5), 1)' (median 0.5), "
            "'HalfNormal(1)' or 'TruncatedNormal(0.5, 1, low=0)'"
        )
    raise PriorError(
        f"invalid prior for {name!r} {shown!r}: it gives values at or below zero a probability, "
        f"but {name!r} is {_role(name)}; {fix}",
        name=name,
        text=text,
    )


def _value_text(value) -> str:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return type(value).__name__
    if arr.size == 1:
        return _fmt(float(arr.reshape(())))
    return np.array2string(arr, precision=3, separator=", ", threshold=6)


def _arguments(d: dist.Distribution) -> tuple[str, list[tuple[str, object]]]:
    """Return a display name and (argument, value) pairs of a distribution."""
    if isinstance(
        d,
        (
            LeftTruncatedDistribution,
            RightTruncatedDistribution,
            TwoSidedTruncatedDistribution,
        ),
    ):
        base_name, base_args = _arguments(d.base_dist)
        display = (
            "TruncatedNormal" if base_name == "Normal" else f"Truncated{base_name}"
        )
        bounds = [(b, getattr(d, b)) for b in ("low", "high") if hasattr(d, b)]
        return display, base_args + bounds
    cls = type(d)
    names = list(getattr(cls, "arg_constraints", {}) or {})
    try:
        order = list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        order = []
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    pairs = [(n, getattr(d, n)) for n in names if getattr(d, n, None) is not None]
    return cls.__name__, pairs


def describe_prior(d) -> str:
    """Describe a prior in one line for reports.

    Parameters
    ----------
    d : numpyro.distributions.Distribution or str
        The prior; text is parsed first.

    Returns
    -------
    str
        E.g. ``"LogNormal(loc=-0.693, scale=1)"``; numbers to 3 significant
        digits. Distributions that wrap another, e.g. ``Independent``, show the
        wrapped one in parentheses.

    Raises
    ------
    TypeError
        If ``d`` is neither a distribution nor text.
    """
    if isinstance(d, str):
        d = parse_prior(d)
    if not isinstance(d, dist.Distribution):
        raise TypeError(
            f"describe_prior expects a numpyro distribution, got {type(d).__name__}"
        )
    display, pairs = _arguments(d)
    if not pairs and getattr(d, "base_dist", None) is not None:
        return f"{display}({describe_prior(d.base_dist)})"
    return f"{display}(" + ", ".join(f"{k}={_value_text(v)}" for k, v in pairs) + ")"
