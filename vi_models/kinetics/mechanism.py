"""Reaction mechanisms: a small text language, its parser and the ODE right-hand side.

A mechanism is written one reaction a line (or several on a line, separated by
``;``); ``#`` starts a comment that runs to the end of the line::

    A -> B : k                  # first order, mass action
    2 A -> C : k2               # second order (also written 2A)
    A + B -> C : k              # bimolecular
    A <=> B : kf, kb            # reversible: forward, then backward constant
    0 -> A : ks                 # zero-order production ('0' is the empty side)
    A -> 0 : kd                 # degradation
    S -> P : mm(Vmax, Km)       # Michaelis-Menten, Vmax*S/(Km+S)
    S -> P : hill(Vmax, K, n)   # Hill, Vmax*S^n/(K^n+S^n)

The text is read by a hand-written tokenizer and recursive-descent parser; nothing
is ever evaluated as Python. Errors are raised as :class:`MechanismError`, which
names the line and column, what was expected and what was found.

The parsed :class:`Mechanism` turns into pure :mod:`jax.numpy` functions
(:meth:`Mechanism.rates`, :meth:`Mechanism.rhs`, :meth:`Mechanism.linear_system`)
whose index arrays are built once at parse time, so they can be jitted, vmapped
and differentiated and handed to diffrax as ``f(t, y, args)``.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BUILTIN_MECHANISMS",
    "RATE_LAWS",
    "Mechanism",
    "MechanismError",
    "RateLaw",
    "Reaction",
    "Term",
    "format_catalogue",
]


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class MechanismError(ValueError):
    """A mechanism text that cannot be read, with its position.

    Parameters
    ----------
    message : str
        The sentence describing the problem, usually ``"expected X, found Y"``.
    line : int, optional
        1-based line number of the problem in the mechanism text.
    column : int, optional
        1-based column of the problem within that line.
    expected : str, optional
        Short description of what the parser expected at that position.
    text : str, optional
        The offending line of the mechanism text, as written.
    found : str, optional
        Short description of what was found instead.

    Attributes
    ----------
    message, line, column, expected, text, found
        As given.

    Notes
    -----
    ``str(err)`` gives ``"line L, column C: <message>"`` followed, when the line is
    not blank, by the line itself and a caret under the column::

        line 2, column 7: expected '->' or '<=>' after the reactants, found ':'
            A + B : k
                  ^
    """

    def __init__(
        self,
        message: str,
        *,
        line: int = 1,
        column: int = 1,
        expected: str = "",
        text: str = "",
        found: str = "",
    ) -> None:
        self.message = message
        self.line = int(line)
        self.column = int(column)
        self.expected = expected
        self.text = text
        self.found = found
        super().__init__(self._render())

    def _render(self) -> str:
        out = f"line {self.line}, column {self.column}: {self.message}"
        shown = self.text.rstrip()
        if shown.strip():
            # Keep tabs in the caret line so that the caret lines up in a terminal.
            pad = "".join(
                "\t" if ch == "\t" else " " for ch in self.text[: self.column - 1]
            )
            pad += " " * max(0, self.column - 1 - len(self.text))
            out += f"\n    {shown}\n    {pad}^"
        return out

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self):
        return (
            _rebuild_mechanism_error,
            (
                self.message,
                self.line,
                self.column,
                self.expected,
                self.text,
                self.found,
            ),
        )


def _rebuild_mechanism_error(message, line, column, expected, text, found):
    """Rebuild a :class:`MechanismError` when unpickling."""
    return MechanismError(
        message, line=line, column=column, expected=expected, text=text, found=found
    )


# --------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One species of a reaction side with its stoichiometric coefficient.

    Parameters
    ----------
    species : str
        Species name.
    coefficient : int
        Positive whole number; ``2`` for ``2 A``.
    """

    species: str
    coefficient: int

    def __str__(self) -> str:
        if self.coefficient == 1:
            return self.species
        return f"{self.coefficient} {self.species}"


@dataclass(frozen=True)
class Reaction:
    """One parsed reaction.

    Parameters
    ----------
    reactants : tuple of Term
        Left-hand side; empty for zero-order production (``0 -> A``). A species
        written twice on one side (``A + A``) is merged into one term (``2 A``).
    products : tuple of Term
        Right-hand side; empty for degradation (``A -> 0``).
    rate_law : str
        ``"mass_action"``, ``"mm"`` or ``"hill"``; see :data:`RATE_LAWS`.
    parameters : tuple of str
        Parameter names in the law's order; ``(kf, kb)`` for a reversible reaction.
    reversible : bool
        True for ``<=>`` (mass action only), which gives two fluxes.
    line : int
        1-based line of the reaction in the mechanism text.
    text : str
        The reaction as written (without comment and surrounding blanks).
    """

    reactants: tuple[Term, ...]
    products: tuple[Term, ...]
    rate_law: str
    parameters: tuple[str, ...]
    reversible: bool
    line: int
    text: str

    def __str__(self) -> str:
        left = " + ".join(str(t) for t in self.reactants) or "0"
        right = " + ".join(str(t) for t in self.products) or "0"
        arrow = "<=>" if self.reversible else "->"
        if self.rate_law == "mass_action":
            rate = ", ".join(self.parameters)
        else:
            rate = f"{self.rate_law}({', '.join(self.parameters)})"
        return f"{left} {arrow} {right} : {rate}"


@dataclass(frozen=True)
class RateLaw:
    """A named rate law that can follow the ``:`` of a reaction.

    Parameters
    ----------
    name : str
        Name as written in a mechanism (``"mm"``), or ``"mass_action"``.
    parameters : tuple of str
        Conventional parameter names, in the order they are written.
    formula : str
        The flux in plain text.
    description : str
        One sentence on when to use it and how to write it.
    """

    name: str
    parameters: tuple[str, ...]
    formula: str
    description: str


RATE_LAWS: dict[str, RateLaw] = {
    "mass_action": RateLaw(
        name="mass_action",
        parameters=("k",),
        formula="k * A^a * B^b * ...  (product over reactants, coefficient as power)",
        description=(
            "Mass action, the default: write the rate constant alone ('A -> B : k'), "
            "or forward and backward constants for a reversible reaction "
            "('A <=> B : kf, kb')."
        ),
    ),
    "mm": RateLaw(
        name="mm",
        parameters=("Vmax", "Km"),
        formula="Vmax * S / (Km + S)",
        description=(
            "Michaelis-Menten saturation of one substrate S: 'S -> P : mm(Vmax, Km)'."
        ),
    ),
    "hill": RateLaw(
        name="hill",
        parameters=("Vmax", "K", "n"),
        formula="Vmax * S^n / (K^n + S^n)",
        description=(
            "Hill kinetics of one substrate S with cooperativity n: "
            "'S -> P : hill(Vmax, K, n)'."
        ),
    ),
}

BUILTIN_MECHANISMS: dict[str, tuple[str, str]] = {
    "first_order": (
        "A -> B : k",
        "first-order conversion of A into B (exponential decay of A)",
    ),
    "reversible": (
        "A <=> B : kf, kb",
        "reversible first-order reaction A <=> B relaxing to equilibrium kf/kb",
    ),
    "consecutive": (
        "A -> B : k1; B -> C : k2",
        "consecutive first-order reactions A -> B -> C "
        "(the intermediate B rises and falls)",
    ),
    "second_order": (
        "2 A -> C : k2",
        "second-order reaction of A with itself, rate k2 * A^2",
    ),
    "bimolecular": (
        "A + B -> C : k",
        "bimolecular reaction of A with B, rate k * A * B",
    ),
    "michaelis_menten": (
        "S -> P : mm(Vmax, Km)",
        "enzyme-catalysed conversion of substrate S into P, rate Vmax * S / (Km + S)",
    ),
    "hill": (
        "S -> P : hill(Vmax, K, n)",
        "cooperative conversion of S into P, rate Vmax * S^n / (K^n + S^n)",
    ),
    "production_degradation": (
        "0 -> A : ks; A -> 0 : kd",
        "constant production and first-order degradation of A (steady state ks/kd)",
    ),
    "enzyme": (
        "E + S <=> ES : kf, kr; ES -> E + P : kcat",
        "full mass-action enzyme mechanism: E and S bind reversibly, ES releases P",
    ),
    "autocatalytic": (
        "A + B -> 2 B : k",
        "autocatalysis: B converts A into more B (logistic growth of B)",
    ),
    "bod": (
        "L -> Y : k",
        "biochemical oxygen demand: remaining demand L is consumed into Y; "
        "Y is observed",
    ),
}


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_SINGLE = {
    "+": "plus",
    ":": "colon",
    ",": "comma",
    "(": "lparen",
    ")": "rparen",
    ";": "semi",
}
_ALL_TOKENS = (
    "a name, a whole-number coefficient, or one of "
    "'+', '->', '<=>', ':', ',', '(', ')', ';'"
)


@dataclass(frozen=True)
class _Token:
    # name, int, float, arrow, rev, plus, colon, comma, lparen, rparen, semi, end
    kind: str
    value: str
    column: int  # 1-based column of the first character
    end: int  # 1-based column just past the last character


def _found(tok: _Token) -> str:
    """Describe a token for the 'found ...' part of an error."""
    if tok.kind == "end":
        return "the end of the line"
    return f"'{tok.value}'"


def _tokenize(code: str, line_no: int, line: str) -> list[_Token]:
    """Split the code part of one line (comment removed) into tokens."""
    tokens: list[_Token] = []
    i, n = 0, len(code)
    while i < n:
        ch = code[i]
        if ch in " \t\r\f\v":
            i += 1
            continue
        if ch.isascii() and (ch.isalpha() or ch == "_"):
            m = _NAME_RE.match(code, i)
            tokens.append(_Token("name", m.group(), i + 1, m.end() + 1))
            i = m.end()
            continue
        if ("0" <= ch <= "9") or (
            ch == "." and i + 1 < n and "0" <= code[i + 1] <= "9"
        ):
            m = _NUMBER_RE.match(code, i)
            kind = "float" if "." in m.group() else "int"
            tokens.append(_Token(kind, m.group(), i + 1, m.end() + 1))
            i = m.end()
            continue
        if code.startswith("->", i):
            tokens.append(_Token("arrow", "->", i + 1, i + 3))
            i += 2
            continue
        if code.startswith("<=>", i):
            tokens.append(_Token("rev", "<=>", i + 1, i + 4))
            i += 3
            continue
        if ch in _SINGLE:
            tokens.append(_Token(_SINGLE[ch], ch, i + 1, i + 2))
            i += 1
            continue
        if ch in "-<=>\u2192\u27f6":
            expected = "'->' or '<=>'"
        elif ch in "\u21cc\u21c4\u2194":
            expected = "'<=>'"
        else:
            expected = _ALL_TOKENS
        raise MechanismError(
            f"expected {expected}, found {ch!r}",
            line=line_no,
            column=i + 1,
            expected=expected,
            text=line,
            found=repr(ch),
        )
    tokens.append(_Token("end", "", len(code.rstrip()) + 1, len(code.rstrip()) + 1))
    return tokens


# --------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """A parsed reaction with the columns needed for later checks."""

    reaction: Reaction
    species: list[tuple[str, int]]  # (name, column) in text order
    parameters: list[tuple[str, int]]  # (name, column) in text order


class _LineParser:
    """Recursive-descent parser over the tokens of one line."""

    def __init__(self, tokens: list[_Token], line_no: int, line: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.line_no = line_no
        self.line = line
        self.last: _Token | None = None

    # -- cursor ------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        tok = self.peek()
        if tok.kind != "end":
            self.pos += 1
        self.last = tok
        return tok

    def fail(
        self, column: int, expected: str, found: str, hint: str = ""
    ) -> MechanismError:
        message = f"expected {expected}, found {found}"
        if hint:
            message += f"; {hint}"
        return MechanismError(
            message,
            line=self.line_no,
            column=column,
            expected=expected,
            text=self.line,
            found=found,
        )

    def fail_at(self, tok: _Token, expected: str, hint: str = "") -> MechanismError:
        return self.fail(tok.column, expected, _found(tok), hint)

    # -- grammar -----------------------------------------------------------------------

    def reactions(self) -> list[_Raw]:
        """``line := [reaction] (';' [reaction])*``."""
        out: list[_Raw] = []
        while True:
            tok = self.peek()
            if tok.kind == "end":
                return out
            if tok.kind == "semi":
                self.advance()
                continue
            out.append(self.reaction())
            tok = self.peek()
            if tok.kind == "semi":
                self.advance()
            elif tok.kind != "end":
                raise self.fail_at(
                    tok, "the end of the reaction (a new line or ';') after the rate"
                )

    def reaction(self) -> _Raw:
        """``reaction := side ('->' | '<=>') side ':' rate``."""
        start = self.peek()
        reactants, r_occ = self.side("reactants")
        arrow = self.peek()
        if arrow.kind not in ("arrow", "rev"):
            raise self.fail_at(arrow, "'->' or '<=>' after the reactants")
        self.advance()
        reversible = arrow.kind == "rev"
        products, p_occ = self.side("products")
        colon = self.peek()
        if colon.kind != "colon":
            if colon.kind in ("end", "semi"):
                raise self.fail_at(
                    colon,
                    "':' and a rate constant after the products, e.g. 'A -> B : k'",
                )
            raise self.fail_at(colon, "':' after the products")
        self.advance()
        law, law_tok, params = self.rate()
        end_col = self.last.end
        text = self.line[start.column - 1 : end_col - 1].strip()

        if not reactants and not products:
            raise self.fail(
                start.column,
                "a species on at least one side of the reaction",
                "'0' on both sides",
            )
        names = [p for p, _ in params]
        if law == "mass_action":
            if reversible and len(params) != 2:
                column = params[2][1] if len(params) > 2 else params[0][1]
                raise self.fail(
                    column,
                    "two rate constants (forward, backward) for the reversible "
                    "reaction, e.g. 'A <=> B : kf, kb'",
                    f"{len(params)} ({', '.join(names)})",
                )
            if not reversible and len(params) != 1:
                raise self.fail(
                    params[1][1],
                    "one rate constant for the irreversible reaction '->'",
                    f"{len(params)} ({', '.join(names)})",
                    "use '<=>' for a reversible reaction with forward and backward "
                    "constants",
                )
        else:
            spec = RATE_LAWS[law]
            if reversible:
                raise self.fail(
                    law_tok.column,
                    "mass-action rate constants 'kf, kb' for the reversible reaction "
                    "'<=>'",
                    f"rate law '{law}'",
                    f"'{law}' only works with '->'; write the backward reaction "
                    "on its own line",
                )
            if len(params) != len(spec.parameters):
                raise self.fail(
                    law_tok.column,
                    f"{len(spec.parameters)} parameters for rate law '{law}' "
                    f"({', '.join(spec.parameters)})",
                    f"{len(params)} ({', '.join(names)})",
                )
            if len(set(names)) != len(names):
                raise self.fail(
                    law_tok.column,
                    f"{len(spec.parameters)} different parameter names for rate law "
                    f"'{law}' ({', '.join(spec.parameters)})",
                    f"'{law}({', '.join(names)})'",
                )
            if len(reactants) != 1 or reactants[0].coefficient != 1:
                written = " + ".join(str(t) for t in reactants) or "0"
                raise self.fail(
                    start.column,
                    f"exactly one reactant species with coefficient 1 for rate law "
                    f"'{law}', e.g. 'S -> P : {law}({', '.join(spec.parameters)})'",
                    f"'{written}'",
                )
        reaction = Reaction(
            reactants=reactants,
            products=products,
            rate_law=law,
            parameters=tuple(names),
            reversible=reversible,
            line=self.line_no,
            text=text,
        )
        return _Raw(reaction, r_occ + p_occ, list(params))

    def side(self, which: str) -> tuple[tuple[Term, ...], list[tuple[str, int]]]:
        """``side := '0' | term ('+' term)*``; equal species are merged."""
        tok = self.peek()
        if tok.kind == "int" and int(tok.value) == 0 and self.peek(1).kind != "name":
            self.advance()
            nxt = self.peek()
            if nxt.kind == "plus":
                follow = "'->' or '<=>'" if which == "reactants" else "':'"
                raise self.fail_at(
                    nxt,
                    f"{follow} after '0' (no {which})",
                    "'0' stands for no species and is written alone",
                )
            return (), []
        occurrences: list[tuple[str, int]] = []
        merged: dict[str, int] = {}
        context = f"the {which} (a species such as 'A' or '2 A', or '0' for none)"
        while True:
            name, coefficient, column = self.term(context)
            occurrences.append((name, column))
            merged[name] = merged.get(name, 0) + coefficient
            if self.peek().kind != "plus":
                break
            self.advance()
            context = "a species after '+'"
        terms = tuple(Term(name, c) for name, c in merged.items())
        return terms, occurrences

    def term(self, context: str) -> tuple[str, int, int]:
        """``term := [INT] NAME``; return (species, coefficient, name column)."""
        tok = self.peek()
        coefficient = 1
        if tok.kind == "int":
            coefficient = int(tok.value)
            if coefficient == 0:
                raise self.fail_at(
                    tok,
                    "a positive whole-number coefficient",
                    "write '0' alone for an empty side",
                )
            self.advance()
            tok = self.peek()
            if tok.kind != "name":
                raise self.fail_at(
                    tok, f"a species name after the coefficient {coefficient}"
                )
        elif tok.kind == "float":
            raise self.fail_at(tok, "a positive whole-number coefficient")
        elif tok.kind != "name":
            raise self.fail_at(tok, context)
        self.advance()
        return tok.value, coefficient, tok.column

    def rate(self) -> tuple[str, _Token, list[tuple[str, int]]]:
        """``rate := NAME (',' NAME)* | LAW '(' NAME (',' NAME)* ')'``."""
        tok = self.peek()
        if tok.kind != "name":
            if tok.kind in ("int", "float"):
                raise self.fail_at(
                    tok,
                    "a rate-constant name after ':'",
                    "rate constants are fitted parameters with names such as 'k'; "
                    "set their values through priors",
                )
            raise self.fail_at(
                tok,
                "a rate-constant name or a rate law such as 'mm(Vmax, Km)' after ':'",
            )
        self.advance()
        if self.peek().kind == "lparen":
            law = tok.value
            if law in ("arrhenius", "eyring"):
                raise self.fail_at(
                    tok,
                    f"a known rate law ({', '.join(RATE_LAWS)})",
                    f"'{law}' depends on the temperature of each experiment: give the mechanism "
                    "as text to kinetics.model(...) with a 'T' condition column, which reads it",
                )
            if law not in RATE_LAWS:
                raise self.fail_at(tok, f"a known rate law ({', '.join(RATE_LAWS)})")
            self.advance()
            params: list[tuple[str, int]] = []
            while True:
                name = self.peek()
                if name.kind != "name":
                    raise self.fail_at(name, f"a parameter name inside '{law}(...)'")
                self.advance()
                params.append((name.value, name.column))
                sep = self.peek()
                if sep.kind == "comma":
                    self.advance()
                    continue
                if sep.kind == "rparen":
                    self.advance()
                    break
                raise self.fail_at(
                    sep, f"',' or ')' after the parameter name '{name.value}'"
                )
            return law, tok, params
        params = [(tok.value, tok.column)]
        while self.peek().kind == "comma":
            self.advance()
            name = self.peek()
            if name.kind != "name":
                raise self.fail_at(name, "a rate-constant name after ','")
            self.advance()
            params.append((name.value, name.column))
        return "mass_action", tok, params


def _split_lines(text: str) -> list[str]:
    return re.split(r"\r\n|\r|\n", text)


def _parse(text: str) -> tuple[tuple[Reaction, ...], tuple[str, ...], tuple[str, ...]]:
    """Parse mechanism text into reactions, species and parameters."""
    if not isinstance(text, str):
        raise TypeError(f"mechanism text must be a str, got {type(text).__name__}")
    lines = _split_lines(text)
    raws: list[tuple[_Raw, int, str]] = []
    for line_no, line in enumerate(lines, start=1):
        code = line.split("#", 1)[0]
        tokens = _tokenize(code, line_no, line)
        for raw in _LineParser(tokens, line_no, line).reactions():
            raws.append((raw, line_no, line))
    if not raws:
        raise MechanismError(
            "the mechanism has no reactions; write one reaction per line, "
            "e.g. 'A -> B : k'",
            line=1,
            column=1,
            expected="at least one reaction",
            text="",
            found="no reactions",
        )

    kind_of: dict[str, tuple[str, int, int]] = {}  # name -> (kind, line, column)
    species: list[str] = []
    parameters: list[str] = []
    for raw, line_no, line in raws:
        for kind, occurrences, bucket in (
            ("species", raw.species, species),
            ("parameter", raw.parameters, parameters),
        ):
            for name, column in occurrences:
                seen = kind_of.get(name)
                if seen is None:
                    kind_of[name] = (kind, line_no, column)
                    bucket.append(name)
                elif seen[0] != kind:
                    expected = f"a {kind} name"
                    found = (
                        f"'{name}', which is already a {seen[0]} "
                        f"(line {seen[1]}, column {seen[2]})"
                    )
                    raise MechanismError(
                        f"expected {expected}, found {found}; a name is either a "
                        "species or a parameter, not both",
                        line=line_no,
                        column=column,
                        expected=expected,
                        text=line,
                        found=found,
                    )
    reactions = tuple(raw.reaction for raw, _, _ in raws)
    return reactions, tuple(species), tuple(parameters)


# --------------------------------------------------------------------------------------
# Compiled form: index arrays built once, used by the jnp functions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Compiled:
    stoichiometry: np.ndarray  # (S, F) int64
    # Mass-action fluxes: rate = k[param] * prod_j y_ext[species[:, j]] ** power[:, j]
    ma_flux: np.ndarray  # (n_ma,) flux index
    ma_param: np.ndarray  # (n_ma,)
    ma_species: np.ndarray  # (n_ma, T), padded with S (a constant 1)
    ma_power: np.ndarray  # (n_ma, T), padded with 1
    mm_flux: np.ndarray
    mm_substrate: np.ndarray
    mm_vmax: np.ndarray
    mm_km: np.ndarray
    hill_flux: np.ndarray
    hill_substrate: np.ndarray
    hill_vmax: np.ndarray
    hill_k: np.ndarray
    hill_n: np.ndarray
    order: (
        np.ndarray | None
    )  # gather index from [ma, mm, hill] into flux order; None = identity
    linear_reason: str  # "" when linear, else a sentence saying why not
    linear_param: np.ndarray  # (F,) parameter of each flux (linear mechanisms)
    linear_reactant: np.ndarray  # (F, S) one-hot reactant of first-order fluxes
    linear_source: np.ndarray  # (F,) 1 for zero-order fluxes
    units: dict[str, tuple[int, int]]


def _compile(
    reactions: tuple[Reaction, ...],
    species: tuple[str, ...],
    parameters: tuple[str, ...],
) -> _Compiled:
    s_index = {name: i for i, name in enumerate(species)}
    p_index = {name: i for i, name in enumerate(parameters)}
    n_s = len(species)

    # (law, reactant terms, product terms, parameter indices, reaction)
    fluxes: list[
        tuple[str, tuple[Term, ...], tuple[Term, ...], list[int], Reaction]
    ] = []
    units: dict[str, tuple[int, int]] = {}
    linear_reason = ""
    for r in reactions:
        pidx = [p_index[p] for p in r.parameters]
        if r.rate_law == "mass_action":
            directions = [(r.reactants, r.products, r.parameters[0], pidx[0], "")]
            if r.reversible:
                directions.append(
                    (r.products, r.reactants, r.parameters[1], pidx[1], "backward ")
                )
            for left, right, pname, pi, label in directions:
                fluxes.append(("mass_action", left, right, [pi], r))
                order = sum(t.coefficient for t in left)
                units.setdefault(pname, (1 - order, -1))
                if order > 1 and not linear_reason:
                    linear_reason = (
                        f"the {label}reaction '{r}' (line {r.line}) is of order {order}"
                    )
        else:
            fluxes.append((r.rate_law, r.reactants, r.products, pidx, r))
            law_units = {"mm": [(1, -1), (1, 0)], "hill": [(1, -1), (1, 0), (0, 0)]}
            for pname, u in zip(r.parameters, law_units[r.rate_law]):
                units.setdefault(pname, u)
            if not linear_reason:
                linear_reason = (
                    f"the reaction '{r}' (line {r.line}) uses the rate law "
                    f"'{r.rate_law}'"
                )

    n_f = len(fluxes)
    stoich = np.zeros((n_s, n_f), dtype=np.int64)
    for f, (_, left, right, _, _) in enumerate(fluxes):
        for t in left:
            stoich[s_index[t.species], f] -= t.coefficient
        for t in right:
            stoich[s_index[t.species], f] += t.coefficient

    ma = [f for f, fl in enumerate(fluxes) if fl[0] == "mass_action"]
    mm = [f for f, fl in enumerate(fluxes) if fl[0] == "mm"]
    hill = [f for f, fl in enumerate(fluxes) if fl[0] == "hill"]

    width = max((len(fluxes[f][1]) for f in ma), default=0)
    ma_species = np.full((len(ma), width), n_s, dtype=np.int32)
    ma_power = np.ones((len(ma), width), dtype=np.int32)
    for row, f in enumerate(ma):
        for j, t in enumerate(fluxes[f][1]):
            ma_species[row, j] = s_index[t.species]
            ma_power[row, j] = t.coefficient

    def idx(values: list[int]) -> np.ndarray:
        return np.asarray(values, dtype=np.int32).reshape(-1)

    concat = ma + mm + hill
    order = None
    if concat != list(range(n_f)):
        order = np.argsort(np.asarray(concat)).astype(np.int32)

    linear_param = np.zeros(n_f, dtype=np.int32)
    linear_reactant = np.zeros((n_f, n_s), dtype=np.float64)
    linear_source = np.zeros(n_f, dtype=np.float64)
    if not linear_reason:
        for f, (_, left, _, pidx, _) in enumerate(fluxes):
            linear_param[f] = pidx[0]
            if left:
                linear_reactant[f, s_index[left[0].species]] = 1.0
            else:
                linear_source[f] = 1.0

    return _Compiled(
        stoichiometry=stoich,
        ma_flux=idx(ma),
        ma_param=idx([fluxes[f][3][0] for f in ma]),
        ma_species=ma_species,
        ma_power=ma_power,
        mm_flux=idx(mm),
        mm_substrate=idx([s_index[fluxes[f][1][0].species] for f in mm]),
        mm_vmax=idx([fluxes[f][3][0] for f in mm]),
        mm_km=idx([fluxes[f][3][1] for f in mm]),
        hill_flux=idx(hill),
        hill_substrate=idx([s_index[fluxes[f][1][0].species] for f in hill]),
        hill_vmax=idx([fluxes[f][3][0] for f in hill]),
        hill_k=idx([fluxes[f][3][1] for f in hill]),
        hill_n=idx([fluxes[f][3][2] for f in hill]),
        order=order,
        linear_reason=linear_reason,
        linear_param=linear_param,
        linear_reactant=linear_reactant,
        linear_source=linear_source,
        units={p: units[p] for p in parameters},
    )


def _check_reaction(r: Reaction) -> None:
    """Check a directly constructed reaction; the parser guarantees all of this."""
    if r.rate_law not in RATE_LAWS:
        raise ValueError(
            f"reaction '{r.text}': unknown rate law {r.rate_law!r}; "
            f"known: {', '.join(RATE_LAWS)}"
        )
    if any(t.coefficient < 1 for t in r.reactants + r.products):
        raise ValueError(f"reaction '{r.text}': coefficients must be positive")
    if not r.reactants and not r.products:
        raise ValueError(f"reaction '{r.text}': both sides are empty")
    if r.rate_law == "mass_action":
        wanted = 2 if r.reversible else 1
    else:
        wanted = len(RATE_LAWS[r.rate_law].parameters)
        if r.reversible:
            raise ValueError(
                f"reaction '{r.text}': '{r.rate_law}' cannot be reversible"
            )
        if len(r.reactants) != 1 or r.reactants[0].coefficient != 1:
            raise ValueError(
                f"reaction '{r.text}': '{r.rate_law}' needs exactly one reactant "
                "species with coefficient 1"
            )
    if len(r.parameters) != wanted:
        raise ValueError(
            f"reaction '{r.text}': expected {wanted} parameters, "
            f"got {len(r.parameters)}"
        )


def _normalize_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _unknown_builtin(name: str) -> ValueError:
    return ValueError(
        f"unknown built-in mechanism {name!r}; known mechanisms: "
        f"{', '.join(BUILTIN_MECHANISMS)}. Or write the reactions themselves, "
        "e.g. 'A -> B : k'"
    )


# --------------------------------------------------------------------------------------
# Mechanism
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Mechanism:
    """A reaction mechanism: reactions, species, parameters and its ODE.

    Build one with :meth:`parse`, :meth:`builtin` or :meth:`from_text_or_name`.

    Parameters
    ----------
    reactions : tuple of Reaction
        The reactions in text order.
    species : tuple of str
        Species names in order of first appearance; the order of ``y``.
    parameters : tuple of str
        Parameter names in order of first appearance; the order of ``k``.
        A name used in several reactions is one shared parameter.
    text : str
        The source text.

    Notes
    -----
    Each irreversible reaction gives one flux; a reversible reaction gives two
    (forward, then backward). :attr:`stoichiometry` maps fluxes to ``dy/dt``.
    """

    reactions: tuple[Reaction, ...]
    species: tuple[str, ...]
    parameters: tuple[str, ...]
    text: str
    _compiled: _Compiled = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        reactions = tuple(self.reactions)
        species = tuple(self.species)
        parameters = tuple(self.parameters)
        object.__setattr__(self, "reactions", reactions)
        object.__setattr__(self, "species", species)
        object.__setattr__(self, "parameters", parameters)
        if not reactions:
            raise ValueError("a mechanism needs at least one reaction")
        for r in reactions:
            _check_reaction(r)
        used_species = {t.species for r in reactions for t in r.reactants + r.products}
        used_params = {p for r in reactions for p in r.parameters}
        for label, names, used in (
            ("species", species, used_species),
            ("parameters", parameters, used_params),
        ):
            if len(set(names)) != len(names):
                raise ValueError(f"{label} {names} contain a name twice")
            if set(names) != used:
                raise ValueError(
                    f"{label} {names} do not match the names used in the reactions "
                    f"({', '.join(sorted(used))})"
                )
        both = set(species) & set(parameters)
        if both:
            raise ValueError(
                f"{', '.join(sorted(both))} used both as species and as parameter"
            )
        object.__setattr__(self, "_compiled", _compile(reactions, species, parameters))

    # -- construction ------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> Mechanism:
        """Parse mechanism text.

        Parameters
        ----------
        text : str
            One reaction a line, or several separated by ``;``; ``#`` comments.

        Returns
        -------
        Mechanism
            The parsed mechanism.

        Raises
        ------
        MechanismError
            With line, column, what was expected and what was found.

        Examples
        --------
        >>> m = Mechanism.parse("A -> B : k1; B -> C : k2")
        >>> m.species, m.parameters
        (('A', 'B', 'C'), ('k1', 'k2'))
        """
        reactions, species, parameters = _parse(text)
        return cls(
            reactions=reactions, species=species, parameters=parameters, text=text
        )

    @classmethod
    def builtin(cls, name: str) -> Mechanism:
        """Return a mechanism from :data:`BUILTIN_MECHANISMS`.

        Parameters
        ----------
        name : str
            Its name, e.g. ``"first_order"``; case and ``-``/``_`` do not matter.

        Returns
        -------
        Mechanism
            The parsed built-in mechanism.

        Raises
        ------
        ValueError
            For an unknown name; the message lists the known names.
        """
        key = _normalize_name(name) if isinstance(name, str) else name
        if key not in BUILTIN_MECHANISMS:
            raise _unknown_builtin(name)
        return cls.parse(BUILTIN_MECHANISMS[key][0])

    @classmethod
    def from_text_or_name(cls, text_or_name: str | Mechanism) -> Mechanism:
        """Return a built-in mechanism by name, or parse mechanism text.

        Parameters
        ----------
        text_or_name : str or Mechanism
            A name from :data:`BUILTIN_MECHANISMS`, mechanism text, or a
            :class:`Mechanism` (returned as is).

        Returns
        -------
        Mechanism
            The mechanism.

        Raises
        ------
        MechanismError
            When the text cannot be parsed.
        ValueError
            When a single word is given that is not a built-in name.
        TypeError
            For anything but a str or a Mechanism.
        """
        if isinstance(text_or_name, Mechanism):
            return text_or_name
        if not isinstance(text_or_name, str):
            raise TypeError(
                "a mechanism must be given as text, a built-in name or a Mechanism, "
                f"got {type(text_or_name).__name__}"
            )
        key = _normalize_name(text_or_name)
        if key in BUILTIN_MECHANISMS:
            return cls.builtin(key)
        if re.fullmatch(r"\s*[A-Za-z_][A-Za-z0-9_-]*\s*", text_or_name):
            raise _unknown_builtin(text_or_name.strip())
        return cls.parse(text_or_name)

    # -- structure ---------------------------------------------------------------------

    @property
    def stoichiometry(self) -> np.ndarray:
        """Net stoichiometry, products minus reactants.

        Returns
        -------
        numpy.ndarray
            Integer array of shape ``(n_species, n_fluxes)``; a reversible reaction
            has two columns (forward, backward). A fresh copy on every access.
        """
        return self._compiled.stoichiometry.copy()

    @property
    def is_linear(self) -> bool:
        """Whether ``dy/dt = K y + b``.

        Returns
        -------
        bool
            True when every flux is mass action of total reactant order <= 1
            (first order, or zero-order production).
        """
        return not self._compiled.linear_reason

    def parameter_units(self) -> dict[str, tuple[int, int]]:
        """Exponents (concentration, time) of the units of each parameter.

        Returns
        -------
        dict of str to (int, int)
            In :attr:`parameters` order. Mass action of order ``n``:
            ``(1 - n, -1)`` (first order ``(0, -1)``, zero order ``(1, -1)``);
            ``Vmax``: ``(1, -1)``; ``Km`` and Hill ``K``: ``(1, 0)``; Hill ``n``:
            ``(0, 0)``.

        Notes
        -----
        A parameter shared by reactions of different kinds takes the units of
        its first use.
        """
        return dict(self._compiled.units)

    # -- numerics ----------------------------------------------------------------------

    def _inputs(self, y, k) -> tuple[jnp.ndarray, jnp.ndarray]:
        y = jnp.asarray(y)
        k = jnp.asarray(k)
        dtype = jnp.result_type(y, k, 1.0)
        if y.ndim == 0 or y.shape[-1] != len(self.species):
            raise ValueError(
                f"y must have {len(self.species)} entries, one per species "
                f"({', '.join(self.species)}), got shape {y.shape}"
            )
        if k.ndim == 0 or k.shape[-1] != len(self.parameters):
            raise ValueError(
                f"k must have {len(self.parameters)} entries, one per parameter "
                f"({', '.join(self.parameters)}), got shape {k.shape}"
            )
        return y.astype(dtype), k.astype(dtype)

    def rates(self, y, k) -> jnp.ndarray:
        """Flux of every reaction direction.

        Parameters
        ----------
        y : array_like
            Concentrations, shape ``(n_species,)`` in :attr:`species` order
            (leading batch dimensions broadcast).
        k : array_like
            Parameters, shape ``(n_parameters,)`` in :attr:`parameters` order
            (leading batch dimensions broadcast).

        Returns
        -------
        jax.Array
            Fluxes, shape ``(..., n_fluxes)``, in the column order of
            :attr:`stoichiometry`.
        """
        y, k = self._inputs(y, k)
        c = self._compiled
        batch = jnp.broadcast_shapes(y.shape[:-1], k.shape[:-1])
        parts = []
        if c.ma_flux.size:
            ones = jnp.ones(y.shape[:-1] + (1,), y.dtype)
            y_ext = jnp.concatenate([y, ones], axis=-1)
            r = k[..., c.ma_param]
            for j in range(c.ma_species.shape[1]):
                r = r * jnp.power(y_ext[..., c.ma_species[:, j]], c.ma_power[:, j])
            parts.append(r)
        if c.mm_flux.size:
            s = y[..., c.mm_substrate]
            parts.append(k[..., c.mm_vmax] * s / (k[..., c.mm_km] + s))
        if c.hill_flux.size:
            s = jnp.maximum(y[..., c.hill_substrate], 0.0)
            positive = s > 0
            s_safe = jnp.where(positive, s, 1.0)
            n = k[..., c.hill_n]
            # S^n / (K^n + S^n) written as a logistic in log S: finite for large n,
            # and zero (with zero gradient) where S <= 0.
            frac = jax.nn.sigmoid(n * (jnp.log(s_safe) - jnp.log(k[..., c.hill_k])))
            parts.append(k[..., c.hill_vmax] * jnp.where(positive, frac, 0.0))
        parts = [jnp.broadcast_to(p, batch + p.shape[-1:]) for p in parts]
        out = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
        if c.order is not None:
            out = out[..., c.order]
        return out

    def rhs(self, t, y, args) -> jnp.ndarray:
        """Right-hand side ``dy/dt`` in the diffrax convention ``f(t, y, args)``.

        Parameters
        ----------
        t : float
            Time (unused; the mechanisms are autonomous).
        y : array_like
            Concentrations, shape ``(n_species,)``.
        args : array_like
            Parameters ``k``, shape ``(n_parameters,)`` in :attr:`parameters` order.

        Returns
        -------
        jax.Array
            ``stoichiometry @ rates(y, k)``, shape ``(n_species,)``.
        """
        r = self.rates(y, args)
        n = jnp.asarray(self._compiled.stoichiometry, dtype=r.dtype)
        return jnp.einsum("...f,sf->...s", r, n, precision=jax.lax.Precision.HIGHEST)

    def linear_system(self, k) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Matrix form ``dy/dt = K @ y + b`` of a linear mechanism.

        Parameters
        ----------
        k : array_like
            Parameters, shape ``(n_parameters,)`` in :attr:`parameters` order.

        Returns
        -------
        K : jax.Array
            Shape ``(n_species, n_species)``.
        b : jax.Array
            Shape ``(n_species,)``; non-zero only for zero-order production.

        Raises
        ------
        ValueError
            If the mechanism is not linear (see :attr:`is_linear`).
        """
        c = self._compiled
        if c.linear_reason:
            raise ValueError(
                "the mechanism is not linear, so it has no matrix form "
                f"dy/dt = K y + b: {c.linear_reason}; only first-order mass action "
                "and zero-order production are linear."
            )
        k = jnp.asarray(k)
        k = k.astype(jnp.result_type(k, 1.0))
        if k.ndim == 0 or k.shape[-1] != len(self.parameters):
            raise ValueError(
                f"k must have {len(self.parameters)} entries, one per parameter "
                f"({', '.join(self.parameters)}), got shape {k.shape}"
            )
        kf = k[..., c.linear_param]
        n = jnp.asarray(c.stoichiometry, dtype=k.dtype)
        reactant = jnp.asarray(c.linear_reactant, dtype=k.dtype)
        source = jnp.asarray(c.linear_source, dtype=k.dtype)
        hi = jax.lax.Precision.HIGHEST
        big_k = jnp.einsum("sf,...f,fr->...sr", n, kf, reactant, precision=hi)
        b = jnp.einsum("sf,...f->...s", n, kf * source, precision=hi)
        return big_k, b

    # -- text --------------------------------------------------------------------------

    def __str__(self) -> str:
        return "\n".join(str(r) for r in self.reactions)

    def __repr__(self) -> str:
        return f"Mechanism.parse({'; '.join(str(r) for r in self.reactions)!r})"


# --------------------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------------------


def _wrap(text: str, indent: int, width: int = 88) -> list[str]:
    """Wrap ``text`` to ``width`` columns, every line indented by ``indent``."""
    pad = " " * indent
    return textwrap.wrap(text, width=width, initial_indent=pad, subsequent_indent=pad)


def format_catalogue() -> str:
    """Describe the built-in mechanisms, the rate laws and the syntax.

    Returns
    -------
    str
        Human-readable text for ``vifit mechanisms``.
    """
    lines = [
        "Built-in mechanisms (give the name, or write the reactions yourself):",
        "",
    ]
    width = max(len(name) for name in BUILTIN_MECHANISMS) + 2
    for name, (text, description) in BUILTIN_MECHANISMS.items():
        lines.append(f"  {name:<{width}}{text}")
        lines += _wrap(description, 2 + width)
    lines += ["", "Rate laws (written after the ':' of a reaction):", ""]
    usage = {
        "mass_action": "k  (or kf, kb with <=>)",
        **{
            name: f"{name}({', '.join(law.parameters)})"
            for name, law in RATE_LAWS.items()
            if name != "mass_action"
        },
    }
    uwidth = max(len(u) for u in usage.values()) + 2
    for name, law in RATE_LAWS.items():
        lines.append(f"  {usage[name]:<{uwidth}}rate = {law.formula}")
        lines += _wrap(law.description, 2 + uwidth)
    lines += [
        "",
        "Syntax: one reaction a line, or several separated by ';'. Coefficients are",
        "whole numbers ('2 A' or '2A'); '0' is the empty side ('0 -> A', 'A -> 0');",
        "'#' starts a comment. A parameter name used in several reactions is shared.",
    ]
    return "\n".join(lines)
