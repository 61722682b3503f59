"""Tests for the reaction-mechanism parser and its ODE right-hand side."""

# ruff: noqa: D103

import builtins
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vi_models  # noqa: F401  (enables float64)
from vi_models.kinetics.mechanism import (
    BUILTIN_MECHANISMS,
    RATE_LAWS,
    Mechanism,
    MechanismError,
    RateLaw,
    Reaction,
    Term,
    format_catalogue,
)


def rhs(m, y, k):
    """Evaluate ``m.rhs`` at ``t = 0`` as a NumPy array."""
    return np.asarray(m.rhs(0.0, jnp.asarray(y, float), jnp.asarray(k, float)))


# --------------------------------------------------------------------------------------
# Valid mechanisms: structure
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, species, parameters, stoichiometry",
    [
        ("A -> B : k", ("A", "B"), ("k",), [[-1], [1]]),
        ("A <=> B : kf, kb", ("A", "B"), ("kf", "kb"), [[-1, 1], [1, -1]]),
        ("2 A -> C : k2", ("A", "C"), ("k2",), [[-2], [1]]),
        ("2A -> C : k2", ("A", "C"), ("k2",), [[-2], [1]]),
        ("A + B -> C : k", ("A", "B", "C"), ("k",), [[-1], [-1], [1]]),
        ("A -> 0 : kd", ("A",), ("kd",), [[-1]]),
        ("0 -> A : ks", ("A",), ("ks",), [[1]]),
        ("S -> P : mm(Vmax, Km)", ("S", "P"), ("Vmax", "Km"), [[-1], [1]]),
        ("S -> P : hill(Vmax, K, n)", ("S", "P"), ("Vmax", "K", "n"), [[-1], [1]]),
        (
            "A -> B : k1; B -> C : k2",
            ("A", "B", "C"),
            ("k1", "k2"),
            [[-1, 0], [1, -1], [0, 1]],
        ),
        (
            "# header\n\nE + S <=> ES : kf, kr   # binding\nES -> E + P : kcat\n",
            ("E", "S", "ES", "P"),
            ("kf", "kr", "kcat"),
            [[-1, 1, 1], [-1, 1, 0], [1, -1, -1], [0, 0, 1]],
        ),
        ("A + B -> 2 B : k", ("A", "B"), ("k",), [[-1], [1]]),
        ("A + A -> B : k", ("A", "B"), ("k",), [[-2], [1]]),
        ("2 A <=> A2 : kf, kb", ("A", "A2"), ("kf", "kb"), [[-2, 2], [1, -1]]),
        ("X -> Y : k; Y -> Z : k", ("X", "Y", "Z"), ("k",), [[-1, 0], [1, -1], [0, 1]]),
        ("A -> B : mass_action(k)", ("A", "B"), ("k",), [[-1], [1]]),
    ],
)
def test_structure(text, species, parameters, stoichiometry):
    m = Mechanism.parse(text)
    assert m.species == species
    assert m.parameters == parameters
    assert m.text == text
    s = m.stoichiometry
    assert s.shape == (len(species), len(stoichiometry[0]))
    np.testing.assert_array_equal(s, np.array(stoichiometry))
    assert np.issubdtype(s.dtype, np.integer)


def test_reaction_fields():
    m = Mechanism.parse("A -> B : k\n  2A + B <=> C : kf, kb ; S -> P : mm(V, Km)")
    r0, r1, r2 = m.reactions
    assert r0 == Reaction(
        (Term("A", 1),), (Term("B", 1),), "mass_action", ("k",), False, 1, "A -> B : k"
    )
    assert r1.reactants == (Term("A", 2), Term("B", 1))
    assert r1.products == (Term("C", 1),)
    assert r1.reversible and r1.rate_law == "mass_action"
    assert r1.parameters == ("kf", "kb")
    assert r1.line == 2 and r1.text == "2A + B <=> C : kf, kb"
    assert r2.rate_law == "mm" and r2.parameters == ("V", "Km") and r2.line == 2
    assert r2.text == "S -> P : mm(V, Km)"


def test_reversible_gives_two_fluxes():
    m = Mechanism.parse("A <=> B : kf, kb; B -> C : k")
    assert m.stoichiometry.shape == (3, 3)
    rates = np.asarray(m.rates(jnp.array([2.0, 3.0, 0.0]), jnp.array([0.5, 0.25, 1.0])))
    np.testing.assert_allclose(rates, [1.0, 0.75, 3.0])


def test_stoichiometry_is_a_copy():
    m = Mechanism.parse("A -> B : k")
    s = m.stoichiometry
    s[0, 0] = 99
    assert m.stoichiometry[0, 0] == -1


def test_str_normalizes():
    m = Mechanism.parse(
        "2A+B->C:k ; A<=>0:kf,kb\n0->S:ks\nS->P:mm(V,Km)\nP -> Q : hill(V,K,n)"
    )
    assert str(m) == (
        "2 A + B -> C : k\n"
        "A <=> 0 : kf, kb\n"
        "0 -> S : ks\n"
        "S -> P : mm(V, Km)\n"
        "P -> Q : hill(V, K, n)"
    )
    assert str(Mechanism.parse("A -> B : k")) == "A -> B : k"
    assert Mechanism.parse(str(m)).stoichiometry.tolist() == m.stoichiometry.tolist()
    assert "A -> B : k" in repr(Mechanism.parse("A -> B : k"))


def test_equal_and_hashable():
    a, b = Mechanism.parse("A -> B : k"), Mechanism.parse("A -> B : k")
    assert a == b and hash(a) == hash(b)
    assert a != Mechanism.parse("A -> C : k")


def test_direct_construction_is_checked():
    r = Reaction(
        (Term("A", 1),), (Term("B", 1),), "mass_action", ("k",), False, 1, "A -> B : k"
    )
    m = Mechanism(
        reactions=(r,), species=("A", "B"), parameters=("k",), text="A -> B : k"
    )
    assert m.stoichiometry.tolist() == [[-1], [1]]
    bad = Reaction((Term("A", 1), Term("B", 1)), (), "mm", ("V", "K"), False, 1, "x")
    with pytest.raises(ValueError, match="exactly one reactant"):
        Mechanism(reactions=(bad,), species=("A", "B"), parameters=("V", "K"), text="")
    with pytest.raises(ValueError, match="do not match"):
        Mechanism(reactions=(r,), species=("A",), parameters=("k",), text="")


# --------------------------------------------------------------------------------------
# Built-ins and the catalogue
# --------------------------------------------------------------------------------------


def test_builtins_parse():
    required = {
        "first_order": "A -> B : k",
        "reversible": "A <=> B : kf, kb",
        "consecutive": "A -> B : k1; B -> C : k2",
        "second_order": "2 A -> C : k2",
        "bimolecular": "A + B -> C : k",
        "michaelis_menten": "S -> P : mm(Vmax, Km)",
        "production_degradation": "0 -> A : ks; A -> 0 : kd",
        "bod": "L -> Y : k",
    }
    for name, text in required.items():
        assert BUILTIN_MECHANISMS[name][0] == text
    for name, (text, description) in BUILTIN_MECHANISMS.items():
        m = Mechanism.builtin(name)
        assert m == Mechanism.parse(text)
        assert description and "\n" not in description
    assert Mechanism.builtin("bod").species == ("L", "Y")


def test_builtin_unknown_lists_names():
    with pytest.raises(ValueError) as info:
        Mechanism.builtin("nope")
    assert not isinstance(info.value, MechanismError)
    for name in BUILTIN_MECHANISMS:
        assert name in str(info.value)


def test_from_text_or_name():
    assert Mechanism.from_text_or_name("first_order") == Mechanism.builtin(
        "first_order"
    )
    assert Mechanism.from_text_or_name("A -> C : k").species == ("A", "C")
    m = Mechanism.parse("A -> B : k")
    assert Mechanism.from_text_or_name(m) is m
    with pytest.raises(ValueError, match="first_order") as info:
        Mechanism.from_text_or_name("frist_order")
    assert not isinstance(info.value, MechanismError)
    with pytest.raises(MechanismError):
        Mechanism.from_text_or_name("A + B : k")
    with pytest.raises(TypeError):
        Mechanism.from_text_or_name(3)


def test_rate_laws_and_catalogue():
    assert set(RATE_LAWS) == {"mass_action", "mm", "hill"}
    assert RATE_LAWS["mm"] == RateLaw(
        "mm", ("Vmax", "Km"), RATE_LAWS["mm"].formula, RATE_LAWS["mm"].description
    )
    assert RATE_LAWS["hill"].parameters == ("Vmax", "K", "n")
    text = format_catalogue()
    for name, (mech, _) in BUILTIN_MECHANISMS.items():
        assert name in text and mech in text
    for law in RATE_LAWS.values():
        assert law.formula in text
    assert "Vmax * S / (Km + S)" in text


# --------------------------------------------------------------------------------------
# Right-hand side values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, y, k, expected",
    [
        ("A -> B : k", [2.0, 1.0], [0.3], [-0.6, 0.6]),
        ("A <=> B : kf, kb", [2.0, 1.0], [0.3, 0.5], [-0.6 + 0.5, 0.6 - 0.5]),
        ("2 A -> C : k", [3.0, 0.0], [0.5], [-2 * 0.5 * 9, 0.5 * 9]),
        ("A + B -> C : k", [2.0, 3.0, 1.0], [0.1], [-0.6, -0.6, 0.6]),
        ("0 -> A : ks; A -> 0 : kd", [4.0], [1.5, 0.25], [1.5 - 1.0]),
        ("S -> P : mm(V, Km)", [2.0, 0.0], [3.0, 1.0], [-2.0, 2.0]),
        (
            "S -> P : hill(V, K, n)",
            [2.0, 0.0],
            [3.0, 1.5, 2.5],
            [-3 * 2**2.5 / (1.5**2.5 + 2**2.5), 3 * 2**2.5 / (1.5**2.5 + 2**2.5)],
        ),
        (
            "2 A + B <=> C : kf, kb",
            [2.0, 3.0, 5.0],
            [0.5, 0.1],
            [-2 * (0.5 * 12 - 0.5), -(0.5 * 12 - 0.5), 0.5 * 12 - 0.5],
        ),
        ("A + B -> 2 B : k", [2.0, 3.0], [0.5], [-3.0, 3.0]),
        (
            "A -> B : k1; B -> C : k2",
            [1.0, 2.0, 0.0],
            [0.5, 0.25],
            [-0.5, 0.5 - 0.5, 0.5],
        ),
    ],
)
def test_rhs_values(text, y, k, expected):
    m = Mechanism.parse(text)
    np.testing.assert_allclose(rhs(m, y, k), expected, rtol=1e-12, atol=1e-12)


def test_hill_negative_substrate_is_zero_and_finite():
    m = Mechanism.parse("S -> P : hill(V, K, n)")
    k = jnp.array([2.0, 1.0, 2.5])
    for s in (-1e-9, 0.0):
        y = jnp.array([s, 1.0])
        np.testing.assert_array_equal(np.asarray(m.rhs(0.0, y, k)), [0.0, 0.0])
        gy = jax.grad(lambda y: m.rhs(0.0, y, k)[1])(y)
        gk = jax.grad(lambda k: m.rhs(0.0, y, k)[1])(k)
        assert np.all(np.isfinite(gy)) and np.all(np.isfinite(gk))


def test_hill_large_n_is_finite():
    m = Mechanism.parse("S -> P : hill(V, K, n)")
    out = rhs(m, [100.0, 0.0], [1.0, 1.0, 400.0])
    np.testing.assert_allclose(out, [-1.0, 1.0])


def test_conservation_reversible():
    m = Mechanism.parse("A <=> B : kf, kb")
    rng = np.random.default_rng(0)
    for _ in range(5):
        y, k = rng.uniform(0, 5, 2), rng.uniform(0, 2, 2)
        assert abs(rhs(m, y, k).sum()) < 1e-12


def test_conservation_enzyme():
    m = Mechanism.builtin("enzyme")  # E + S <=> ES ; ES -> E + P
    y, k = [1.0, 2.0, 0.5, 0.0], [1.0, 0.3, 0.7]
    d = dict(zip(m.species, rhs(m, y, k)))
    assert abs(d["E"] + d["ES"]) < 1e-12
    assert abs(d["S"] + d["ES"] + d["P"]) < 1e-12


def test_shape_errors():
    m = Mechanism.parse("A -> B : k")
    with pytest.raises(ValueError, match="2 entries"):
        m.rhs(0.0, jnp.ones(3), jnp.ones(1))
    with pytest.raises(ValueError, match="1 entries"):
        m.rates(jnp.ones(2), jnp.ones(2))


# --------------------------------------------------------------------------------------
# jit, grad, vmap
# --------------------------------------------------------------------------------------


def test_jit_grad_vmap():
    m = Mechanism.parse("A + B -> C : k1; C -> A : k2; 0 -> B : ks; A -> P : mm(V, Km)")
    y = jnp.array([1.0, 2.0, 0.5, 0.0])
    k = jnp.array([0.3, 0.2, 0.1, 1.0, 0.5])
    eager = m.rhs(0.0, y, k)
    np.testing.assert_allclose(jax.jit(m.rhs)(0.0, y, k), eager, rtol=1e-12)

    # d(dC/dt)/dk = (A*B, -C, 0, 0, 0)
    g = jax.grad(lambda k: m.rhs(0.0, y, k)[2])(k)
    np.testing.assert_allclose(g, [2.0, -0.5, 0.0, 0.0, 0.0], atol=1e-12)
    # d(dA/dt)/dy: -k1*B - V*Km/(Km+A)^2, -k1*A, k2, 0
    gy = jax.grad(lambda y: m.rhs(0.0, y, k)[0])(y)
    np.testing.assert_allclose(
        gy, [-0.6 - 1.0 * 0.5 / 1.5**2, -0.3, 0.2, 0.0], atol=1e-12
    )

    ys = jnp.stack([y, 2 * y, 3 * y])
    batched = jax.vmap(m.rhs, in_axes=(None, 0, None))(0.0, ys, k)
    for i in range(3):
        np.testing.assert_allclose(batched[i], m.rhs(0.0, ys[i], k), rtol=1e-12)


def test_grad_at_zero_concentration_is_finite():
    m = Mechanism.parse("2 A + B -> C : k")
    g = jax.grad(lambda y: m.rhs(0.0, y, jnp.array([1.0]))[2])(jnp.zeros(3))
    np.testing.assert_array_equal(np.asarray(g), [0.0, 0.0, 0.0])


def test_diffrax_solve_first_order():
    diffrax = pytest.importorskip("diffrax")
    m = Mechanism.builtin("first_order")
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(m.rhs),
        diffrax.Tsit5(),
        t0=0.0,
        t1=2.0,
        dt0=0.05,
        y0=jnp.array([1.0, 0.0]),
        args=jnp.array([0.7]),
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10),
    )
    np.testing.assert_allclose(sol.ys[-1], [np.exp(-1.4), 1 - np.exp(-1.4)], rtol=1e-6)


# --------------------------------------------------------------------------------------
# Linearity
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, linear",
    [
        ("A -> B : k", True),
        ("A <=> B : kf, kb", True),
        ("0 -> A : ks; A -> 0 : kd", True),
        ("A -> B : k1; B -> C : k2", True),
        ("E -> E + P : k", True),
        ("2 A -> C : k", False),
        ("A + B -> C : k", False),
        ("A <=> 2 B : kf, kb", False),
        ("S -> P : mm(V, Km)", False),
        ("S -> P : hill(V, K, n)", False),
    ],
)
def test_is_linear(text, linear):
    assert Mechanism.parse(text).is_linear is linear


@pytest.mark.parametrize(
    "text",
    [
        "A -> B : k",
        "A <=> B : kf, kb",
        "0 -> A : ks; A <=> B : kf, kb; B -> 0 : kd; B -> C + A : k3; C -> 0 : kd",
        "E -> E + P : k; 0 -> E : ks",
    ],
)
def test_linear_system_matches_rhs(text):
    m = Mechanism.parse(text)
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = jnp.asarray(rng.uniform(0, 3, len(m.species)))
        k = jnp.asarray(rng.uniform(0.1, 2, len(m.parameters)))
        big_k, b = m.linear_system(k)
        assert big_k.shape == (len(m.species),) * 2 and b.shape == (len(m.species),)
        np.testing.assert_allclose(
            big_k @ y + b, m.rhs(0.0, y, k), rtol=1e-12, atol=1e-12
        )


def test_linear_system_values():
    big_k, b = Mechanism.builtin("production_degradation").linear_system(
        jnp.array([2.0, 0.5])
    )
    np.testing.assert_allclose(big_k, [[-0.5]])
    np.testing.assert_allclose(b, [2.0])
    big_k, b = Mechanism.builtin("reversible").linear_system(jnp.array([0.3, 0.1]))
    np.testing.assert_allclose(big_k, [[-0.3, 0.1], [0.3, -0.1]])
    np.testing.assert_allclose(b, [0.0, 0.0])
    g = jax.grad(lambda k: Mechanism.builtin("reversible").linear_system(k)[0][0, 0])(
        jnp.array([0.3, 0.1])
    )
    np.testing.assert_allclose(g, [-1.0, 0.0])


def test_linear_system_refuses_nonlinear():
    with pytest.raises(ValueError, match="not linear.*order 2"):
        Mechanism.parse("A -> B : k1; 2 B -> C : k2").linear_system(jnp.ones(2))
    with pytest.raises(ValueError, match="not linear.*'mm'"):
        Mechanism.parse("S -> P : mm(V, Km)").linear_system(jnp.ones(2))


# --------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------


def test_parameter_units():
    m = Mechanism.parse(
        "A -> B : k1\n2 A -> C : k2\nA + B + C -> D : k3\n0 -> A : ks\n"
        "2 A <=> E : kf, kb\nS -> P : mm(Vmax, Km)\nP -> Q : hill(V2, K, n)"
    )
    units = m.parameter_units()
    assert list(units) == list(m.parameters)
    assert units == {
        "k1": (0, -1),
        "k2": (-1, -1),
        "k3": (-2, -1),
        "ks": (1, -1),
        "kf": (-1, -1),
        "kb": (0, -1),
        "Vmax": (1, -1),
        "Km": (1, 0),
        "V2": (1, -1),
        "K": (1, 0),
        "n": (0, 0),
    }


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, column, fragment",
    [
        ("A + B : k", 1, 7, "'->' or '<=>' after the reactants, found ':'"),
        ("A -> B : k\nA + B : k", 2, 7, "'->' or '<=>'"),
        ("A -> B :", 1, 9, "rate-constant name"),
        ("A -> B : k; C -> D :  # no constant", 1, 21, "found the end of the line"),
        ("A -> B k", 1, 8, "':' after the products, found 'k'"),
        ("A -> B", 1, 7, "':'"),
        ("S -> P : foo(a)", 1, 10, "mass_action, mm, hill"),
        ("S -> P : mm(V)", 1, 10, "2 parameters"),
        ("S -> P : mm(V, Km, x)", 1, 10, "found 3"),
        ("S -> P : hill(V, K)", 1, 10, "3 parameters"),
        ("S -> P : mm()", 1, 13, "parameter name inside 'mm(...)'"),
        ("S -> P : mm(V, Km", 1, 18, "',' or ')'"),
        ("S -> P : mm(V, V)", 1, 10, "different parameter names"),
        ("A + B -> P : mm(V, Km)", 1, 1, "exactly one reactant"),
        ("2 S -> P : mm(V, Km)", 1, 1, "coefficient 1"),
        ("0 -> P : hill(V, K, n)", 1, 1, "exactly one reactant"),
        ("A <=> B : mm(V, Km)", 1, 11, "mass-action"),
        ("0 -> 0 : k", 1, 1, "both sides"),
        ("A -> B : k\n  0 -> 0 : k", 2, 3, "both sides"),
        ("1.5 A -> B : k", 1, 1, "whole-number coefficient, found '1.5'"),
        ("A -> 2.5 B : k", 1, 6, "whole-number"),
        ("0 A -> B : k", 1, 1, "positive whole-number"),
        ("2 -> B : k", 1, 3, "species name after the coefficient 2"),
        ("A + -> B : k", 1, 5, "a species after '+'"),
        ("-> B : k", 1, 1, "the reactants"),
        ("0 + A -> B : k", 1, 3, "after '0'"),
        ("A -> B : k1, k2", 1, 14, "one rate constant"),
        ("A <=> B : k", 1, 11, "two rate constants"),
        ("A <=> B : k1, k2, k3", 1, 19, "two rate constants"),
        ("A -> B : 0.5", 1, 10, "rate-constant name"),
        ("A -> B : k k2", 1, 12, "end of the reaction"),
        ("A -> B : k,", 1, 12, "after ','"),
        ("A => B : k", 1, 3, "'->' or '<=>'"),
        ("A -> B : k $", 1, 12, "found '$'"),
        ("A -> B : k; B -> A : A", 1, 22, "already a species"),
        ("A -> B : k0\nk0 -> C : k", 2, 1, "already a parameter"),
        ("# comment\n\tA -> B : k; C -> : k2", 2, 19, "the products"),
        ("", 1, 1, "no reactions"),
        ("# nothing here\n\n   \n", 1, 1, "no reactions"),
        ("A -> B : k\r\nA -> : k", 2, 6, "the products"),
    ],
)
def test_invalid(text, line, column, fragment):
    with pytest.raises(MechanismError) as info:
        Mechanism.parse(text)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert fragment in str(err)
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"line {line}, column {column}: ")
    if "no reactions" not in fragment:
        assert err.expected and err.expected in str(err)
        assert err.text == text.replace("\r", "").split("\n")[line - 1]


def test_error_format_matches_spec():
    with pytest.raises(MechanismError) as info:
        Mechanism.parse("A -> B : k\nA + B : k")
    assert str(info.value) == (
        "line 2, column 7: expected '->' or '<=>' after the reactants, found ':'\n"
        "    A + B : k\n"
        "          ^"
    )
    assert info.value.expected == "'->' or '<=>' after the reactants"
    assert info.value.text == "A + B : k"


def test_empty_mechanism_message():
    with pytest.raises(MechanismError) as info:
        Mechanism.parse("  # just a comment\n")
    assert (
        "the mechanism has no reactions; write one reaction per line, e.g. 'A -> B : k'"
        in str(info.value)
    )


def test_error_pickles():
    with pytest.raises(MechanismError) as info:
        Mechanism.parse("A + B : k")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.column == 7


def test_never_evaluates(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    for text in [
        "__import__('os')",
        "__import__('os').system('echo hi') -> B : k",
        "A -> B : __import__('os')",
        "A -> B : exec",
    ]:
        if text == "A -> B : exec":
            # a plain name is a valid parameter name, and is only a name
            assert Mechanism.parse(text).parameters == ("exec",)
            continue
        with pytest.raises(MechanismError):
            Mechanism.parse(text)
    assert Mechanism.parse("A -> B : k").parameters == ("k",)


# --------------------------------------------------------------------------------------
# Property: str() round-trips, and the stoichiometry matches the generated network
# --------------------------------------------------------------------------------------

SPECIES = ["A", "B", "C", "D", "X1", "y_2"]
PARAMS = [f"k{i}" for i in range(6)]


@st.composite
def side_st(draw):
    """Draw one reaction side: up to 3 (coefficient, species) terms."""
    n = draw(st.integers(0, 3))
    return [(draw(st.integers(1, 3)), draw(st.sampled_from(SPECIES))) for _ in range(n)]


@st.composite
def network_st(draw):
    """Draw a small mass-action network as (left, right, reversible, params)."""
    reactions = []
    for _ in range(draw(st.integers(1, 5))):
        left, right = draw(side_st()), draw(side_st())
        if not left and not right:
            right = [(1, draw(st.sampled_from(SPECIES)))]
        reversible = draw(st.booleans())
        params = [draw(st.sampled_from(PARAMS)) for _ in range(2 if reversible else 1)]
        reactions.append((left, right, reversible, params))
    return reactions


def render_side(terms, compact):
    """Write a side as text, spaced (``2 A + B``) or compact (``2A+1B``)."""
    if not terms:
        return "0"
    out = []
    for c, s in terms:
        if c == 1 and not compact:
            out.append(s)
        else:
            out.append(f"{c}{s}" if compact else f"{c} {s}")
    return (" + " if not compact else "+").join(out)


@settings(max_examples=60, deadline=None)
@given(network_st(), st.booleans(), st.sampled_from(["\n", "; ", " ;\n# c\n"]))
def test_roundtrip_property(network, compact, separator):
    lines = []
    for left, right, reversible, params in network:
        arrow = "<=>" if reversible else "->"
        lines.append(
            f"{render_side(left, compact)} {arrow} {render_side(right, compact)}"
            f" : {', '.join(params)}"
        )
    m = Mechanism.parse(separator.join(lines))

    # species and parameters in order of first appearance
    order = []
    for left, right, _, _ in network:
        for _, s in left + right:
            if s not in order:
                order.append(s)
    assert m.species == tuple(order)
    porder = list(dict.fromkeys(p for *_, params in network for p in params))
    assert m.parameters == tuple(porder)

    # stoichiometry computed independently from the generated network
    columns = []
    for left, right, reversible, _ in network:
        col = np.zeros(len(order), dtype=int)
        for c, s in left:
            col[order.index(s)] -= c
        for c, s in right:
            col[order.index(s)] += c
        columns += [col, -col] if reversible else [col]
    np.testing.assert_array_equal(m.stoichiometry, np.stack(columns, axis=1))

    again = Mechanism.parse(str(m))
    assert again.species == m.species
    assert again.parameters == m.parameters
    np.testing.assert_array_equal(again.stoichiometry, m.stoichiometry)
    assert str(again) == str(m)
