"""Tests for vi_models.kinetics.dataset: reading, validating and packing data."""

# ruff: noqa: D103

import csv
import dataclasses
import pathlib
import pickle

import numpy as np
import pytest

from vi_models.kinetics.dataset import DataError, Dataset, bundled_path

BENCH = pathlib.Path(__file__).resolve().parents[3] / "benchmarks" / "data"


def write(tmp_path, text, name="data.csv"):
    """Write ``text`` to a file in ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path, text, name="data.csv"):
    """Write ``text``, expect from_csv to fail, return (message, error)."""
    path = write(tmp_path, text, name)
    with pytest.raises(DataError) as info:
        Dataset.from_csv(path)
    msg = str(info.value)
    assert str(path) in msg, msg  # every file error names the file
    return msg, info.value


def raw_rows(path):
    """Read a CSV file's rows with the csv module, as strings."""
    with open(path) as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------------------------
# The benchmark files
# ---------------------------------------------------------------------------------


def test_a_decay():
    path = BENCH / "a_decay.csv"
    d = Dataset.from_csv(path)
    rows = raw_rows(path)[1:]
    assert d.species == ("A",)
    assert d.experiments == ("0",)
    assert d.times.shape == (1, 20)
    assert d.values.shape == (1, 20, 1)
    assert d.mask.all()
    assert d.n_times.tolist() == [20]
    np.testing.assert_array_equal(d.times[0], [float(r[0]) for r in rows])
    np.testing.assert_array_equal(d.values[0, :, 0], [float(r[1]) for r in rows])
    assert d.values[0, 0, 0] == 0.9957762176
    assert d.source == str(path)
    assert d.n_observations == 20
    assert d.t_max == pytest.approx(10.0)
    assert d.c_max == 0.9957762176


def test_b_reversible_two_species_and_negative_values():
    path = BENCH / "b_reversible.csv"
    d = Dataset.from_csv(path)
    rows = raw_rows(path)[1:]
    assert d.species == ("A", "B")
    assert d.values.shape == (1, 30, 2)
    assert d.n_observations == 60
    # Noisy measurements may be slightly negative; they are data, not errors.
    assert d.values[0, 0, 1] == -0.01618270364
    np.testing.assert_array_equal(d.values[0, :, 1], [float(r[2]) for r in rows])


def test_c_mm():
    d = Dataset.from_csv(BENCH / "c_mm.csv")
    assert d.species == ("S",)
    assert d.values.shape == (1, 25, 1)
    assert d.values[0, 0, 0] == 9.989338747
    assert d.t_max == pytest.approx(20.0)


def test_d_hier_fifty_experiments():
    path = BENCH / "d_hier.csv"
    d = Dataset.from_csv(path)
    rows = raw_rows(path)[1:]
    assert d.species == ("A",)
    assert d.n_experiments == 50
    assert d.experiments == tuple(str(i) for i in range(50))
    assert d.times.shape == (50, 15)
    assert d.values.shape == (50, 15, 1)
    assert d.n_times.tolist() == [15] * 50
    assert d.mask.all()
    expected = np.array([float(r[2]) for r in rows]).reshape(50, 15)
    np.testing.assert_array_equal(d.values[..., 0], expected)
    times = np.array([float(r[1]) for r in rows]).reshape(50, 15)
    np.testing.assert_array_equal(d.times, times)
    t, v, m = d.experiment("7")
    np.testing.assert_array_equal(v[:, 0], expected[7])


# ---------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------


def test_long_format_unmeasured_point(tmp_path):
    path = write(
        tmp_path,
        "t,species,value\n0,A,1.0\n0,B,0.0\n1,A,0.5\n2,A,0.25\n2,B,0.7\n",
    )
    d = Dataset.from_csv(path)
    assert d.species == ("A", "B")
    np.testing.assert_array_equal(d.times, [[0.0, 1.0, 2.0]])
    assert d.mask[0].tolist() == [[True, True], [True, False], [True, True]]
    assert np.isnan(d.values[0, 1, 1])
    np.testing.assert_array_equal(d.values[0, :, 0], [1.0, 0.5, 0.25])
    assert d.values[0, 2, 1] == 0.7
    assert d.n_observations == 5


def test_long_format_species_in_order_of_first_appearance(tmp_path):
    path = write(tmp_path, "time,species,value\n0,P,0\n0,E,1\n1,E,0.5\n1,P,0.4\n")
    d = Dataset.from_csv(path)
    assert d.species == ("P", "E")
    np.testing.assert_array_equal(d.values[0], [[0.0, 1.0], [0.4, 0.5]])


def test_long_format_replicates_are_kept(tmp_path):
    path = write(
        tmp_path,
        "exp,t,species,value\n"
        "x,0,A,1.0\n"
        "x,0,A,1.1\n"
        "x,1,A,0.5\n"
        "x,1,B,0.2\n"
        "x,1,A,0.6\n"
        "y,0,B,3\n",
    )
    d = Dataset.from_csv(path)
    assert d.experiments == ("x", "y")
    assert d.n_times.tolist() == [4, 1]
    assert d.n_observations == 6
    t, v, m = d.experiment("x")
    np.testing.assert_array_equal(t, [0, 0, 1, 1])
    np.testing.assert_array_equal(v[:, 0], [1.0, 1.1, 0.5, 0.6])
    assert m[:, 1].tolist() == [False, False, True, False]
    assert v[2, 1] == 0.2
    t, v, m = d.experiment("y")
    np.testing.assert_array_equal(t, [0.0])
    assert m.tolist() == [[False, True]]
    assert v[0, 1] == 3.0


def test_wide_format_replicate_rows_are_kept(tmp_path):
    d = Dataset.from_csv(write(tmp_path, "t,A\n0,1\n1,0.5\n1,0.55\n2,0.2\n"))
    np.testing.assert_array_equal(d.times, [[0, 1, 1, 2]])
    np.testing.assert_array_equal(d.values[0, :, 0], [1, 0.5, 0.55, 0.2])


def test_header_names_case_and_whitespace_and_comments(tmp_path):
    path = write(
        tmp_path,
        "# measured 2024, lab notebook p. 12\n"
        "\n"
        " RUN , Time ,  A1 \n"
        "# a comment between rows\n"
        "r2, 0, 1.0\n"
        "r1, 0, 2.0\n"
        "r2, 1.5, 0.5\n",
    )
    d = Dataset.from_csv(path)
    assert d.species == ("A1",)
    assert d.experiments == ("r2", "r1")  # order of first appearance
    assert d.n_times.tolist() == [2, 1]
    np.testing.assert_array_equal(d.times, [[0, 1.5], [0, 0]])


def test_padding_rule(tmp_path):
    d = Dataset.from_csv(
        write(tmp_path, "exp,t,A,B\n1,0,1,0\n1,2,0.5,0.5\n1,4,0.2,0.8\n2,0.5,3,1\n")
    )
    assert d.n_times.tolist() == [3, 1]
    assert d.times.shape == (2, 3)
    np.testing.assert_array_equal(d.times[1], [0.5, 0.5, 0.5])
    assert not d.mask[1, 1:].any()
    assert np.isnan(d.values[1, 1:]).all()
    assert d.mask[1, 0].all()
    t, v, m = d.experiment(1)
    assert t.shape == (1,) and v.shape == (1, 2) and m.shape == (1, 2)
    t, v, m = d.experiment(-2)
    np.testing.assert_array_equal(t, [0, 2, 4])


def test_bom_and_crlf_are_read(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftime,A\r\n0,1\r\n1,0.5\r\n".encode())
    d = Dataset.from_csv(path)
    assert d.species == ("A",)
    np.testing.assert_array_equal(d.values[0, :, 0], [1.0, 0.5])


# ---------------------------------------------------------------------------------
# from_arrays
# ---------------------------------------------------------------------------------


def test_from_arrays_matches_from_csv_wide():
    path = BENCH / "b_reversible.csv"
    rows = np.array(raw_rows(path)[1:], dtype=float)
    a = Dataset.from_arrays(
        rows[:, 0], {"A": rows[:, 1], "B": rows[:, 2]}, source=str(path)
    )
    b = Dataset.from_arrays(
        rows[:, 0], rows[:, 1:], species=["A", "B"], source=str(path)
    )
    c = Dataset.from_csv(path)
    assert a == c
    assert b == c
    assert hash(a) == hash(c)


def test_from_arrays_matches_from_csv_hier():
    path = BENCH / "d_hier.csv"
    rows = np.array(raw_rows(path)[1:], dtype=float)
    times = [rows[rows[:, 0] == e, 1] for e in range(50)]
    values = [{"A": rows[rows[:, 0] == e, 2]} for e in range(50)]
    a = Dataset.from_arrays(times, values, source=str(path))
    assert a == Dataset.from_csv(path)


def test_from_arrays_matches_from_csv_long(tmp_path):
    path = write(
        tmp_path,
        "run,t,species,value\na,0,A,1\na,1,A,0.5\na,1,B,0.4\nb,0,B,2\nb,3,A,0.1\n",
    )
    a = Dataset.from_arrays(
        [[0, 1], [0, 3]],
        [{"A": [1, 0.5], "B": [np.nan, 0.4]}, {"B": [2, np.nan], "A": [np.nan, 0.1]}],
        experiments=["a", "b"],
        source=str(path),
    )
    assert a == Dataset.from_csv(path)


def test_from_arrays_ragged_experiments_and_initial():
    d = Dataset.from_arrays(
        [np.array([0.0, 1.0, 2.0]), np.array([0.0])],
        [np.array([[1.0], [0.5], [np.nan]]), np.array([[2.0]])],
        species=["A"],
        experiments=[10, 20],
        initial={"A": [1.0, 2.0], "E0": 0.1},
        time_unit="s",
        concentration_unit="mM",
    )
    assert d.experiments == ("10", "20")
    assert d.n_times.tolist() == [3, 1]
    assert d.mask[0, :, 0].tolist() == [True, True, False]
    np.testing.assert_array_equal(d.times[1], [0, 0, 0])
    np.testing.assert_array_equal(d.initial["A"], [1.0, 2.0])
    np.testing.assert_array_equal(d.initial["E0"], [0.1, 0.1])
    assert d.n_observations == 3
    text = d.describe()
    assert "2 experiments" in text and "'A'" in text and "0 to 2 s" in text
    assert "3 observed values" in text and "E0" in text


def test_from_arrays_one_species_1d_values():
    d = Dataset.from_arrays([0, 1, 2], [3.0, 2.0, 1.0], species=["X"])
    np.testing.assert_array_equal(d.values[0, :, 0], [3, 2, 1])
    assert d.experiments == ("0",)


def test_from_arrays_copies_its_inputs():
    t = np.array([0.0, 1.0])
    v = np.array([1.0, 0.5])
    d = Dataset.from_arrays(t, {"A": v})
    assert t.flags.writeable and v.flags.writeable
    v[0] = 99.0
    assert d.values[0, 0, 0] == 1.0


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        (dict(times=[0, 1, 2], values={"A": [1, 2]}), ["values['A']", "(2,)", "(3,)"]),
        (
            dict(times=[0, 1], values=np.ones((2, 3)), species=["A", "B"]),
            ["values", "(2, 3)", "(2, 2)"],
        ),
        (dict(times=[0, 1], values=np.ones((2, 1))), ["species="]),
        (dict(times=[[0, 1], [0, 2]], values={"A": [1, 2]}), ["list of dicts"]),
        (
            dict(times=[0, 1], values=[{"A": [1, 2]}, {"A": [1, 2]}]),
            ["times", "list of arrays"],
        ),
        (
            dict(times=[[0, 1], [0, 2]], values=[{"A": [1, 2]}]),
            ["list of 1", "2 experiments"],
        ),
        (
            dict(times=[[0, 1], [0]], values=[{"A": [1, 2]}, {"A": [1, 2]}]),
            ["values[1]['A']", "times[1]"],
        ),
        (
            dict(times=[0, 1], values={"A": [1, 2]}, experiments=["a", "b"]),
            ["experiments=", "2 labels", "1 experiment"],
        ),
        (
            dict(times=[0, 1], values={"A": [1, 2]}, species=["A", "B"]),
            ["species=", "'B'"],
        ),
        (
            dict(times=np.zeros((2, 2)), values={"A": [1, 2]}),
            ["times", "(2, 2)", "1-D"],
        ),
        (dict(times=[], values={"A": []}), ["times is empty"]),
        (dict(times=[0, -1], values={"A": [1, 2]}), ["times[1]", "negative", "t = 0"]),
        (
            dict(times=[0, 2, 1], values={"A": [1, 2, 3]}),
            ["times decreases", "index 2", "sort"],
        ),
        (dict(times=[0, np.inf], values={"A": [1, 2]}), ["times", "infinite"]),
        (dict(times=[0, 1], values={"A": [1, np.inf]}), ["values", "infinite"]),
        (
            dict(times=[0, 1], values={"A": [1, 2]}, initial={"A": [1, 2]}),
            ["initial['A']", "(2,)", "1 experiment"],
        ),
        (
            dict(times=[0, 1], values={"A": [1, 2]}, initial={"A": -1}),
            ["initial['A']", "negative"],
        ),
        (
            dict(times=[0, 1], values={"A": [1, 2], "B": [np.nan, np.nan]}),
            ["'B'", "no observed value"],
        ),
    ],
)
def test_from_arrays_errors(kwargs, fragments):
    with pytest.raises(DataError) as info:
        Dataset.from_arrays(**kwargs)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_constructor_checks_invariants():
    good = dict(
        species=("A",),
        experiments=("0", "1"),
        times=np.array([[0.0, 1.0], [0.0, 0.0]]),
        values=np.array([[[1.0], [0.5]], [[2.0], [np.nan]]]),
        mask=np.array([[[True], [True]], [[True], [False]]]),
        n_times=np.array([2, 1]),
    )
    d = Dataset(**good)
    assert d.n_observations == 3
    with pytest.raises(DataError, match="padding does not repeat its last time"):
        Dataset(**{**good, "times": np.array([[0.0, 1.0], [0.0, 5.0]])})
    with pytest.raises(DataError, match="marks padding entries as observed"):
        Dataset(**{**good, "mask": np.ones((2, 2, 1), dtype=bool)})
    with pytest.raises(DataError, match=r"values has shape \(2, 2, 2\)"):
        Dataset(**{**good, "values": np.ones((2, 2, 2))})
    bad_mask = good["mask"].copy()
    bad_values = good["values"].copy()
    bad_values[0, 1, 0] = np.nan
    with pytest.raises(DataError, match="observed values must be finite"):
        Dataset(**{**good, "values": bad_values, "mask": bad_mask})
    with pytest.raises(DataError, match="must be bool"):
        Dataset(**{**good, "mask": good["mask"].astype(float)})
    with pytest.raises(DataError, match="appear more than once"):
        Dataset(**{**good, "experiments": ("0", "0")})
    # Unobserved entries are NaN whatever was passed.
    vals = good["values"].copy()
    vals[1, 1, 0] = 7.0
    assert np.isnan(Dataset(**{**good, "values": vals}).values[1, 1, 0])


# ---------------------------------------------------------------------------------
# CSV validation
# ---------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        Dataset.from_csv(tmp_path / "nope.csv")
    assert "nope.csv" in str(info.value)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(DataError, match="not a file"):
        Dataset.from_csv(tmp_path)


def test_empty_file(tmp_path):
    msg, _ = load_error(tmp_path, "")
    assert "empty" in msg and "header" in msg
    msg, _ = load_error(tmp_path, "# only a comment\n\n")
    assert "empty" in msg


def test_header_only(tmp_path):
    msg, err = load_error(tmp_path, "# source\nt,A\n")
    assert "line 2" in msg and "no data rows" in msg
    assert err.line == 2


def test_no_time_column(tmp_path):
    msg, err = load_error(tmp_path, "minutes,A\n0,1\n")
    assert "line 1" in msg and "no time column" in msg
    assert "'minutes', 'A'" in msg
    assert "'time' or 't'" in msg
    assert err.line == 1


def test_semicolon_separated_file_gets_a_hint(tmp_path):
    msg, _ = load_error(tmp_path, "t;A\n0;1\n")
    assert "comma" in msg


def test_duplicate_column_names(tmp_path):
    msg, err = load_error(tmp_path, "t,A,B,A\n0,1,2,3\n")
    assert "line 1" in msg and "'A'" in msg and "more than once" in msg
    assert err.column == "A"


def test_two_time_columns(tmp_path):
    msg, _ = load_error(tmp_path, "time,T,A\n0,0,1\n")
    assert "2 time columns" in msg and "'time', 'T'" in msg


def test_empty_column_name(tmp_path):
    msg, _ = load_error(tmp_path, "t,A,\n0,1,\n")
    assert "line 1" in msg and "column 3 has no name" in msg


def test_wide_file_without_species_columns(tmp_path):
    msg, _ = load_error(tmp_path, "exp,t\n1,0\n")
    assert "line 1" in msg and "no species columns" in msg


@pytest.mark.parametrize(
    "header, missing", [("t,species", "'value'"), ("t,value,exp", "'species'")]
)
def test_long_file_missing_species_or_value(tmp_path, header, missing):
    msg, _ = load_error(tmp_path, f"{header}\n0,1\n")
    assert "line 1" in msg and "long" in msg and f"no {missing} column" in msg


def test_long_file_with_extra_column(tmp_path):
    msg, err = load_error(tmp_path, "t,species,value,unit\n0,A,1,mM\n")
    assert "'unit'" in msg and err.column == "unit"


def test_missing_time(tmp_path):
    msg, err = load_error(tmp_path, "t,A\n0,1\nNA,2\n")
    assert "line 3, column 't'" in msg and "time is missing" in msg
    assert (err.line, err.column) == (3, "t")


def test_missing_values_in_wide_species_column(tmp_path):
    lines = ["t,A,B"]
    for i in range(2, 21):
        a = "" if i in (4, 9, 17) else "1"
        lines.append(f"{i},{a},2")
    msg, err = load_error(tmp_path, "\n".join(lines) + "\n")
    assert "column 'A' has 3 missing values (lines 4, 9, 17)" in msg
    assert "fill or remove them" in msg and "long format (time, species, value)" in msg
    assert "'B'" not in msg
    assert (err.line, err.column) == (4, "A")


@pytest.mark.parametrize("cell", ["", "NA", "nan", "NaN", " na "])
def test_missing_value_spellings(tmp_path, cell):
    msg, _ = load_error(tmp_path, f"t,A\n0,1\n1,{cell}\n")
    assert "column 'A' has 1 missing value (line 3)" in msg


def test_many_missing_values_list_five_lines_and_count(tmp_path):
    body = "".join(f"{i},\n" for i in range(8))
    msg, _ = load_error(tmp_path, "# c\nt,A\n" + body)
    assert "column 'A' has 8 missing values (lines 3, 4, 5, 6, 7, ...)" in msg


def test_missing_values_in_two_columns(tmp_path):
    msg, _ = load_error(tmp_path, "t,A,B\n0,,1\n1,1,\n")
    assert "column 'A' has 1 missing value (line 2)" in msg
    assert "column 'B' has 1 missing value (line 3)" in msg


def test_non_numeric_cell(tmp_path):
    text = "t,A\n0,1\n1,0.9\n2,0.8\n3,0.7\n4,abc\n"
    msg, err = load_error(tmp_path, text)
    assert "line 6, column 'A': 'abc' is not a number" in msg
    assert (err.line, err.column) == (6, "A")


def test_non_numeric_time(tmp_path):
    msg, _ = load_error(tmp_path, "time,A\n0,1\n5 min,2\n")
    assert "line 3, column 'time': '5 min' is not a number" in msg


def test_infinite_value(tmp_path):
    msg, _ = load_error(tmp_path, "t,A\n0,1\n1,inf\n")
    assert "line 3, column 'A'" in msg and "infinite" in msg


def test_negative_time(tmp_path):
    msg, err = load_error(tmp_path, "t,A\n-1,1\n0,2\n")
    assert "line 2, column 't'" in msg and "negative" in msg
    assert "times are measured from the start of each experiment, t = 0" in msg


def test_decreasing_times(tmp_path):
    text = "exp,t,A\nx,0,1\ny,0,1\nx,5,1\ny,1,1\nx,3,1\n"
    msg, err = load_error(tmp_path, text)
    assert "line 6" in msg and "experiment 'x'" in msg
    assert "from 5 (line 4) to 3 (line 6)" in msg
    assert "sort the rows by time" in msg
    assert err.line == 6


def test_decreasing_times_single_experiment(tmp_path):
    msg, _ = load_error(tmp_path, "t,A\n0,1\n2,1\n1.5,1\n")
    assert "line 4" in msg and "from 2 (line 3) to 1.5 (line 4)" in msg
    assert "sort the rows by time" in msg


def test_decreasing_times_long_format(tmp_path):
    msg, _ = load_error(tmp_path, "t,species,value\n0,A,1\n2,B,1\n1,A,1\n")
    assert "line 4" in msg and "sort the rows by time" in msg


@pytest.mark.parametrize("row, n", [("1,2,3", 3), ("1", 1)])
def test_wrong_number_of_cells(tmp_path, row, n):
    msg, err = load_error(tmp_path, f"t,A\n0,1\n{row}\n")
    assert "line 3" in msg and f"has {n} cell" in msg and "header has 2 columns" in msg
    assert err.line == 3


def test_line_numbers_count_comment_lines(tmp_path):
    msg, _ = load_error(tmp_path, "# a\n# b\nt,A\n0,1\n\n1,x\n")
    assert "line 6, column 'A'" in msg


def test_long_format_missing_cells(tmp_path):
    msg, _ = load_error(tmp_path, "t,species,value\n0,A,1\n1,A,\n")
    assert "line 3, column 'value'" in msg and "remove the row" in msg
    msg, _ = load_error(tmp_path, "t,species,value\n0,A,1\n1,,2\n")
    assert "line 3, column 'species'" in msg and "missing" in msg
    msg, _ = load_error(tmp_path, "exp,t,species,value\n1,0,A,1\n,1,A,2\n")
    assert "line 3, column 'exp'" in msg and "label is missing" in msg


# ---------------------------------------------------------------------------------
# Queries, immutability
# ---------------------------------------------------------------------------------


def test_check_species():
    d = Dataset.from_arrays(
        [0, 1], {"A": [1, 0.5], "Bx": [0, 0.5]}, initial={"A": 1.0, "C": 0.0}
    )
    d.check_species(["A", "Bx", "C", "D"])
    with pytest.raises(DataError) as info:
        d.check_species(["A", "B", "C"])
    msg = str(info.value)
    assert "'Bx'" in msg and "'A', 'B', 'C'" in msg
    assert "Rename the column" in msg and "add 'Bx' to the mechanism" in msg
    assert "'A'" not in msg.split("has species")[1].split("that")[0]
    with pytest.raises(DataError) as info:
        d.check_species(["A", "Bx"], what="the model 'mm'")
    msg = str(info.value)
    assert "initial concentrations for 'C'" in msg and "the model 'mm'" in msg


def test_arrays_are_read_only_and_dataset_is_frozen():
    d = Dataset.from_arrays([0, 1], {"A": [1, 0.5]}, initial={"A": 1.0})
    for arr in (d.times, d.values, d.mask, d.n_times, d.initial["A"]):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 0
    with pytest.raises(TypeError):
        d.initial["B"] = np.zeros(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.species = ("B",)
    t, v, m = d.experiment(0)
    assert not (t.flags.writeable or v.flags.writeable or m.flags.writeable)


def test_experiment_lookup_errors():
    d = Dataset.from_arrays(
        [[0], [0, 1]], [{"A": [1]}, {"A": [1, 2]}], experiments="ab"
    )
    with pytest.raises(KeyError, match="'a', 'b'"):
        d.experiment("c")
    with pytest.raises(IndexError, match="2 experiments"):
        d.experiment(2)
    with pytest.raises(TypeError):
        d.experiment(1.0)
    assert d.experiment("b")[0].tolist() == [0, 1]


def test_pickle_round_trip_and_equality():
    d = Dataset.from_arrays([0, 1], {"A": [1, np.nan], "B": [0, 1]}, initial={"A": 2})
    e = pickle.loads(pickle.dumps(d))
    assert e == d and hash(e) == hash(d)
    assert not e.values.flags.writeable
    assert e.initial["A"].tolist() == [2.0]
    assert d != Dataset.from_arrays([0, 1], {"A": [1, np.nan], "B": [0, 1.5]})
    assert d != dataclasses.replace(d, time_unit="h")


# ---------------------------------------------------------------------------------
# Bundled data
# ---------------------------------------------------------------------------------


def test_bod_bundled_file():
    path = bundled_path("bod.csv")
    assert path.is_file()
    d = Dataset.from_csv(path, time_unit="day", concentration_unit="mg/l")
    assert d.species == ("Y",)
    assert d.n_observations == 6
    np.testing.assert_array_equal(d.times, [[1, 2, 3, 4, 5, 7]])
    np.testing.assert_array_equal(
        d.values[0, :, 0], [8.3, 10.3, 19.0, 16.0, 15.6, 19.8]
    )
    assert d.time_unit == "day" and d.concentration_unit == "mg/l"
    assert "day" in d.describe() and "6 observed values" in d.describe()
    sources = (path.parent / "SOURCES.md").read_text()
    assert "Marske" in sources and "Appendix A1.4" in sources


def test_bundled_path_unknown_name_lists_files():
    with pytest.raises(DataError, match="'bod.csv'") as info:
        bundled_path("bod.txt")
    assert "bod.txt" in str(info.value)
