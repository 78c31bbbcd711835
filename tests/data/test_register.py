"""Tests of causalcell.data: the registry, exact arrays, error messages, non-mutation."""

import copy
import json

import anndata
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse

from causalcell.data import (
    UNS_KEY,
    Registry,
    ScreenArrays,
    condition_labels,
    register,
    to_arrays,
)

GENES = ["A", "B", "C"]
COUNTS = np.array(
    [
        [1, 0, 2],  # c0 control
        [0, 3, 1],  # c1 A
        [4, 0, 0],  # c2 B+A
        [2, 2, 2],  # c3 A+B
        [0, 0, 5],  # c4 A+control: the control member means "no further target"
        [1, 1, 0],  # c5 C
        [3, 0, 1],  # c6 control
    ],
    dtype=np.float32,
)
LABELS = ["control", "A", "B+A", "A+B", "A+control", "C", "control"]


def make_screen(
    counts=COUNTS, labels=LABELS, genes=GENES, format=None, counts_layer=False, **obs_columns
):
    """A small screen; ``format`` is None (dense), "csr" or "csc"; optional "counts" layer."""
    n_cells = counts.shape[0]
    obs = pd.DataFrame({"perturbation": labels, **obs_columns})
    obs.index = [f"c{index}" for index in range(n_cells)]
    var = pd.DataFrame({"symbol": [f"{gene}-symbol" for gene in genes]}, index=list(genes))
    matrix = counts if format is None else sparse.csr_matrix(counts).asformat(format)
    layers = {"counts": matrix.copy()} if counts_layer else None
    return anndata.AnnData(X=matrix, obs=obs, var=var, layers=layers)


def snapshot(adata):
    return {
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "X": adata.X.copy(),
        "layers": {key: value.copy() for key, value in adata.layers.items()},
        "uns": copy.deepcopy(dict(adata.uns)),
    }


def assert_same_matrix(matrix, reference):
    assert type(matrix) is type(reference) and matrix.dtype == reference.dtype
    if sparse.issparse(reference):
        assert matrix.format == reference.format
        assert (matrix != reference).nnz == 0
    else:
        np.testing.assert_array_equal(matrix, reference)


def assert_unchanged(adata, before):
    pd.testing.assert_frame_equal(adata.obs, before["obs"])  # also checks categories
    pd.testing.assert_frame_equal(adata.var, before["var"])
    assert_same_matrix(adata.X, before["X"])
    assert adata.layers.keys() == before["layers"].keys()
    for key, value in before["layers"].items():
        assert_same_matrix(adata.layers[key], value)
    assert dict(adata.uns) == before["uns"]


def test_register_vocabularies():
    registry = register(make_screen())
    assert registry.genes == ("A", "B", "C")
    assert registry.conditions == ("control", "A", "A+B", "C")
    np.testing.assert_array_equal(
        registry.condition_targets,
        [[False, False, False], [True, False, False], [True, True, False], [False, False, True]],
    )
    assert registry.targets == ("A", "B", "C")
    assert registry.control == ("control",)
    assert "genes=('A', 'B', 'C')" in repr(registry)
    with pytest.raises(ValueError, match="read-only"):
        registry.condition_targets[0, 0] = True


@pytest.mark.parametrize("format", [None, "csr", "csc"])
def test_to_arrays_exact(format):
    adata = make_screen(format=format)
    arrays = to_arrays(adata, register(adata))
    assert isinstance(arrays, ScreenArrays)
    np.testing.assert_array_equal(arrays.counts, COUNTS)
    assert arrays.counts.dtype == np.float32 and isinstance(arrays.counts, np.ndarray)
    np.testing.assert_array_equal(arrays.size_factors, COUNTS.sum(axis=1))
    assert arrays.size_factors.dtype == np.float32
    np.testing.assert_array_equal(arrays.condition_index, [0, 1, 2, 2, 1, 3, 0])
    assert arrays.condition_index.dtype == np.int32
    # "B+A" and "A+B" are one condition with the multi-hot row of {A, B}.
    np.testing.assert_array_equal(arrays.condition_targets[arrays.condition_index[2]], [1, 1, 0])
    assert arrays.genes == ("A", "B", "C")
    assert arrays.conditions == ("control", "A", "A+B", "C")
    assert arrays.covariates == {}
    if format is None:
        assert not np.shares_memory(arrays.counts, adata.X)


def test_condition_labels_canonical():
    adata = make_screen()
    labels = condition_labels(adata, register(adata))
    assert labels.tolist() == ["control", "A", "A+B", "A+B", "A", "C", "control"]


def test_several_control_labels_and_other_separator():
    labels = ["ctrl", "A|ctrl", "non-targeting", "B|A", "A|B", "C", "ctrl"]
    adata = make_screen(labels=labels)
    registry = register(adata, control=["ctrl", "non-targeting"], separator="|")
    assert registry.control == ("ctrl", "non-targeting")
    assert registry.conditions == ("ctrl", "A", "A|B", "C")
    np.testing.assert_array_equal(to_arrays(adata, registry).condition_index, [0, 1, 0, 2, 2, 3, 0])
    # A set of control labels is sorted, so the control condition does not depend on hashing.
    assert register(adata, control={"ctrl", "non-targeting"}, separator="|").conditions[0] == "ctrl"


def test_layer_gene_key_and_size_factor_key():
    adata = make_screen(size_factor=np.arange(1.0, 8.0))
    adata.layers["counts"] = COUNTS * 2
    adata.X = np.log1p(COUNTS)  # normalised .X; the counts live in a layer
    symbol = {"A": "A-symbol", "B": "B-symbol", "C": "C-symbol", "control": "control"}
    labels = ["+".join(symbol[member] for member in label.split("+")) for label in LABELS]
    adata.obs["perturbation"] = labels
    registry = register(adata, layer="counts", gene_key="symbol", size_factor_key="size_factor")
    assert registry.genes == ("A-symbol", "B-symbol", "C-symbol")
    assert registry.targets == ("A-symbol", "B-symbol", "C-symbol")
    assert registry.conditions == ("control", "A-symbol", "A-symbol+B-symbol", "C-symbol")
    arrays = to_arrays(adata, registry)
    np.testing.assert_array_equal(arrays.counts, COUNTS * 2)
    np.testing.assert_array_equal(arrays.size_factors, np.arange(1.0, 8.0))


def test_covariates_categorical_and_numeric():
    batch = pd.Categorical(
        ["b2", "b1", "b2", "b1", "b1", "b2", "b1"], categories=["b2", "b1", "b9"]
    )
    donor = ["y", "x", "x", "y", "x", "x", "y"]  # object column: sorted unique values
    dose = [0.0, 1.0, 2.0, 0.5, 1.0, 1.0, 0.0]
    adata = make_screen(batch=batch, donor=donor, dose=dose)
    registry = register(adata, covariate_keys=("batch", "donor", "dose"))
    assert registry.covariate_categories == {"batch": ("b2", "b1", "b9"), "donor": ("x", "y")}
    covariates = to_arrays(adata, registry).covariates
    np.testing.assert_array_equal(covariates["batch"], [0, 1, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(covariates["donor"], [1, 0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(covariates["dose"], np.array(dose, dtype=np.float32))
    assert covariates["batch"].dtype == np.int32 and covariates["dose"].dtype == np.float32
    assert register(adata, covariate_keys="dose").covariate_keys == ("dose",)


@pytest.mark.parametrize("format", [None, "csr"])
def test_adata_never_modified(format):
    adata = make_screen(
        format=format, batch=pd.Categorical(["x"] * 7, categories=["y", "x"]), dose=np.ones(7)
    )
    adata.obs["perturbation"] = adata.obs["perturbation"].astype("category")
    adata.layers["counts"] = adata.X.copy()
    adata.uns["note"] = {"kept": [1, 2]}
    before = snapshot(adata)
    registry = register(adata, layer="counts", covariate_keys=["batch", "dose"])
    to_arrays(adata, registry)
    condition_labels(adata, registry)
    assert_unchanged(adata, before)
    assert list(adata.obs["batch"].cat.categories) == ["y", "x"]


def test_register_never_densifies_sparse(monkeypatch):
    adata = make_screen(format="csr")

    def refuse(*args, **kwargs):
        raise AssertionError("register densified the sparse counts")

    monkeypatch.setattr(type(adata.X), "toarray", refuse)
    monkeypatch.setattr(type(adata.X), "todense", refuse)
    register(adata)


def test_store_writes_uns_and_round_trips(tmp_path):
    adata = make_screen(batch=["b1", "b2"] * 3 + ["b1"])
    registry = register(adata, covariate_keys=["batch"], control=["control", "ctrl"], store=True)
    stored = adata.uns[UNS_KEY]
    assert stored == registry.to_dict()
    assert Registry.from_dict(json.loads(json.dumps(stored))) == registry
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    reread = Registry.from_dict(anndata.read_h5ad(path).uns[UNS_KEY])
    assert reread == registry and hash(reread) == hash(registry)
    np.testing.assert_array_equal(reread.condition_targets, registry.condition_targets)
    assert reread.covariate_categories == {"batch": ("b1", "b2")}


def test_from_dict_rejects_other_schema_and_bad_conditions():
    data = Registry(genes=("A",), conditions=("control", "A")).to_dict()
    with pytest.raises(ValueError, match=r"schema_version 99 .* register the AnnData again"):
        Registry.from_dict({**data, "schema_version": 99})
    with pytest.raises(ValueError, match="'Z' is not a canonical label of perturbations"):
        Registry.from_dict({**data, "conditions": ["control", "Z"]})


def bad_counts(row, column, value, format=None):
    counts = COUNTS.copy()
    counts[row, column] = value
    return make_screen(counts=counts, format=format)


REGISTER_ERRORS = [
    (lambda: make_screen()[:0], {}, ValueError, r"empty \(0 cells x 3 genes\)"),
    (make_screen, {"perturbation_key": "perturbaton"}, KeyError, "Did you mean 'perturbation'"),
    (
        make_screen,
        {"layer": "count"},
        KeyError,
        r"adata.layers has no 'count'. It has none. .*layer=None to use .X",
    ),
    (
        lambda: make_screen(counts_layer=True),
        {"layer": "count"},
        KeyError,
        r"adata.layers has no 'count'. Did you mean 'counts'\? Available: \['counts'\]",
    ),
    (make_screen, {"gene_key": "symbols"}, KeyError, r"Did you mean 'symbol'.*Pass gene_key="),
    (make_screen, {"size_factor_key": "sf"}, KeyError, r"adata.obs has no 'sf'"),
    (make_screen, {"covariate_keys": ["batch"]}, KeyError, "Pass covariate_keys="),
    (make_screen, {"control": "ctrl"}, ValueError, "No control cells.*control='control'"),
    (
        lambda: make_screen(labels=["NT", "A", "B", "A", "B", "C", "NT"]),
        {},
        ValueError,
        r"No control cells.*Labels present: \['NT', 'A', 'B', 'C'\]",
    ),
    (
        lambda: make_screen(labels=["control", "A", "X", "Y+A", "X", "C", "control"]),
        {},
        ValueError,
        r"2 perturbation target\(s\) are not among the genes \(.var_names\): \['X', 'Y'\], "
        r"in 3 cell\(s\).*drop those cells \(labels \['X', 'Y\+A'\]\).*gene_key=",
    ),
    (
        lambda: make_screen(labels=["control", "A-symbol", "A", "A", "A", "A", "control"]),
        {},
        ValueError,
        "The .var column 'symbol' holds all of them: pass gene_key='symbol'",
    ),
    (
        lambda: make_screen(labels=["control", "A", "B", "A", "A", "C", "control"]),
        {"gene_key": "symbol"},
        ValueError,
        r"\(.var\['symbol'\]\).*The .var_names hold all of them: pass gene_key=None",
    ),
    (
        lambda: make_screen(genes=["A", "B", "A"]),
        {},
        ValueError,
        r"Duplicate gene names in .var_names: \[\('A', 2\)\].*var_names_make_unique",
    ),
    (
        lambda: make_screen(labels=["control", "A", None, "A", None, "C", "control"]),
        {},
        ValueError,
        r"2 missing \(NaN\) labels \(first: cell 'c2'\)",
    ),
    (
        lambda: make_screen(labels=["control", "A", "A++B", "A", "A", "C", "control"]),
        {},
        ValueError,
        r"In .obs\['perturbation'\]: .*'A\+\+B' has an empty member",
    ),
    (
        lambda: bad_counts(3, 1, -1.0),
        {},
        ValueError,
        r".X has entries that are not valid counts \(1 negative\); the first is -1.0 at cell "
        r"'c3', gene 'B'.*count_data=False",
    ),
    (
        lambda: bad_counts(2, 2, 0.5, format="csr"),
        {},
        ValueError,
        r"\(1 non-integer\); the first is 0.5 at cell 'c2', gene 'C'",
    ),
    (
        lambda: bad_counts(4, 0, np.nan, format="csc"),
        {},
        ValueError,
        r"\(1 non-finite\); the first is nan at cell 'c4', gene 'A'",
    ),
    (
        lambda: bad_counts(4, 0, np.nan),
        {"count_data": False},
        ValueError,
        r"not valid values \(1 non-finite\)",
    ),
    (
        lambda: make_screen(counts=np.vstack([COUNTS[:6], np.zeros((1, 3), np.float32)])),
        {},
        ValueError,
        r"1 cell\(s\) have a library size .* \(first: cell 'c6', value 0.0\).*filter_cells",
    ),
    (
        lambda: make_screen(size_factor=[1.0, 2.0, 0.0, 1.0, -1.0, 1.0, 1.0]),
        {"size_factor_key": "size_factor"},
        ValueError,
        r"2 cell\(s\) have a size factor in .obs\['size_factor'\] that is not positive",
    ),
    (
        lambda: make_screen(batch=["x", None, "y", "x", "x", "x", "y"]),
        {"covariate_keys": ["batch"]},
        ValueError,
        r"Covariate .obs\['batch'\] has 1 missing or non-finite values \(first: cell 'c1'\)",
    ),
]


@pytest.mark.filterwarnings("ignore:Variable names are not unique:UserWarning")
@pytest.mark.parametrize(("build", "kwargs", "error", "message"), REGISTER_ERRORS)
def test_register_errors(build, kwargs, error, message):
    with pytest.raises(error, match=message):
        register(build(), **kwargs)


def test_register_rejects_non_anndata():
    with pytest.raises(TypeError, match=r"Expected an anndata\.AnnData, got DataFrame"):
        register(pd.DataFrame(COUNTS))


def test_count_data_false_accepts_normalised_values():
    adata = make_screen(counts=np.log1p(COUNTS) + 0.25)
    registry = register(adata, count_data=False)
    np.testing.assert_allclose(to_arrays(adata, registry).counts, np.log1p(COUNTS) + 0.25)


def test_to_arrays_rejects_mismatched_genes():
    registry = register(make_screen())
    other = make_screen(genes=["A", "B", "D"])
    with pytest.raises(ValueError, match=r"missing \['C'\], extra \['D'\]"):
        to_arrays(other, registry)
    reordered = make_screen()[:, ["C", "A", "B"]]
    with pytest.raises(ValueError, match=r"same genes, other order.*adata\[:, list\(registry"):
        to_arrays(reordered, registry)


def test_to_arrays_rejects_unseen_conditions_and_categories():
    adata = make_screen(batch=["x", "y", "x", "y", "x", "y", "x"])
    registry = register(adata, covariate_keys=["batch"])
    held_out = make_screen(labels=["control", "B", "C+B", "B", "A", "C", "control"])
    held_out.obs["batch"] = ["x"] * 7
    with pytest.raises(
        ValueError, match=r"2 condition\(s\) .* not in the registry: \['B', 'C\+B'\]"
    ):
        to_arrays(held_out, registry)
    held_out.obs["perturbation"] = LABELS
    held_out.obs["batch"] = ["x", "z", "x", "x", "x", "x", "x"]
    with pytest.raises(ValueError, match=r"values not in the registry: \['z'\]"):
        to_arrays(held_out, registry)
    # A subset of the registered conditions is fine: indices refer to registry.conditions.
    subset = adata[[1, 5]].copy()
    np.testing.assert_array_equal(to_arrays(subset, registry).condition_index, [1, 3])


@st.composite
def labelled_cells(draw):
    """Target sets per cell, each written as a label with shuffled members and control tokens."""
    genes = ["A", "B", "C", "D"]
    target_sets = draw(st.lists(st.frozensets(st.sampled_from(genes)), min_size=1, max_size=12))
    labels = []
    for targets in target_sets:
        members = draw(st.permutations(sorted(targets)))
        members = members + ["ctrl"] * draw(st.integers(0, 1 if targets else 0))
        labels.append("+".join(draw(st.permutations(members))) if members else "ctrl")
    return genes, [frozenset(), *target_sets], ["ctrl", *labels]


@settings(max_examples=40, deadline=None)
@given(labelled_cells())
def test_labels_round_trip_to_one_condition(case):
    genes, target_sets, labels = case
    counts = np.ones((len(labels), len(genes)), dtype=np.float32)
    adata = make_screen(counts=counts, labels=labels, genes=genes)
    registry = register(adata, control="ctrl")
    arrays = to_arrays(adata, registry)
    expected_labels = ["+".join(sorted(targets)) or "ctrl" for targets in target_sets]
    assert condition_labels(adata, registry).tolist() == expected_labels
    for targets, index in zip(target_sets, arrays.condition_index):
        expected_row = [gene in targets for gene in genes]
        np.testing.assert_array_equal(arrays.condition_targets[index], expected_row)
    assert len(registry.conditions) == len(set(target_sets))


def test_labels_joined_by_another_separator_suggest_it():
    labels = ["control", "A", "A_B", "B_C", "C", "control", "B"]
    with pytest.raises(ValueError, match=r"joined by '_'.*pass separator='_'"):
        register(make_screen(labels=labels))
    registry = register(make_screen(labels=labels), separator="_")
    assert "A_B" in registry.conditions and registry.targets == ("A", "B", "C")
    # Guide-level labels ("A_2") are not combinations of genes: no separator is suggested.
    with pytest.raises(ValueError) as error:
        register(make_screen(labels=["control", "A_2", "A", "B", "C", "control", "B"]))
    assert "separator" not in str(error.value)


def test_perturbation_targets_from_an_obs_column():
    """Guides and a two-target drug named in .obs["target"]: singles define each member,
    a combination of known members adds nothing, an unknown one pairs members in order."""
    labels = ["control", "GATA1_1", "GATA1_2", "drug", "GATA1_1+drug", "sgA+sgB", "a"]
    targets = ["control", "GATA1", "GATA1", "a+b", "GATA1+a+b", "a+b", "a"]
    adata = anndata.AnnData(
        np.ones((len(labels), 3), dtype=np.float32),
        obs=pd.DataFrame(
            {"perturbation": labels, "target": targets},
            index=[f"c{index}" for index in range(len(labels))],
        ),
        var=pd.DataFrame(index=["a", "b", "GATA1"]),
    )
    registry = register(adata, perturbation_targets="target")
    assert registry.perturbation_targets == {
        "GATA1_1": ("GATA1",),
        "GATA1_2": ("GATA1",),
        "drug": ("a", "b"),
        "sgA": ("a",),
        "sgB": ("b",),
    }
    row = registry.conditions.index("GATA1_1+drug")
    assert registry.condition_targets[row].tolist() == [True, True, True]
    conflicting = anndata.AnnData(
        np.ones((3, 3), dtype=np.float32),
        obs=pd.DataFrame(
            {"perturbation": ["control", "g1", "g1"], "target": ["control", "a", "b"]},
            index=["c0", "c1", "c2"],
        ),
        var=pd.DataFrame(index=["a", "b", "GATA1"]),
    )
    with pytest.raises(ValueError, match="'g1' two sets of targets"):
        register(conflicting, perturbation_targets="target")
    with pytest.raises(KeyError, match="nocolumn"):
        register(conflicting, perturbation_targets="nocolumn")


def test_perturbation_kinds_from_a_mapping_or_a_kind_column():
    adata = anndata.AnnData(
        np.ones((3, 2), dtype=np.float32),
        obs=pd.DataFrame({"perturbation": ["control", "ko_a", "kd_a"]}, index=["c0", "c1", "c2"]),
        var=pd.DataFrame(index=["a", "b"]),
    )
    table = pd.DataFrame(
        {"perturbation": ["ko_a", "kd_a"], "target": ["a", "a"], "kind": ["knockout", None]}
    )
    registry = register(adata, perturbation_targets=table)
    assert registry.perturbation_kinds == {"ko_a": "knockout"}
    assert Registry.from_dict(registry.to_dict()) == registry
    registry = register(
        adata, perturbation_targets={"ko_a": "a", "kd_a": "a"}, perturbation_kinds={"kd_a": "shift"}
    )
    assert registry.perturbation_kinds == {"kd_a": "shift"}
    with pytest.raises(ValueError, match=r"names \['ko_b'\], which are neither genes"):
        register(
            adata,
            perturbation_targets={"ko_a": "a", "kd_a": "a"},
            perturbation_kinds={"ko_b": "knockout"},
        )
    with pytest.raises(ValueError, match="unknown kinds"):
        register(
            adata,
            perturbation_targets={"ko_a": "a", "kd_a": "a"},
            perturbation_kinds={"ko_a": "ko"},
        )
