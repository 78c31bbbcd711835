"""read_screen: scPerturb, GEARS and guide-level conventions mapped to causalcell's labels, on
fixtures built with each format's conventions."""

import anndata
import numpy as np
import pandas as pd
import pytest

from causalcell.data import read_screen, register

GENES = ["GATA1", "CEBPA", "SPI1", "HLA-A"]


def screen(**columns):
    cells = len(next(iter(columns.values())))
    return anndata.AnnData(
        np.arange(cells * len(GENES), dtype=np.float32).reshape(cells, len(GENES)),
        obs=pd.DataFrame(columns, index=[f"c{index}" for index in range(cells)]),
        var=pd.DataFrame(index=GENES),
    )


def report(adata) -> pd.DataFrame:
    return pd.DataFrame(adata.uns["read_screen"]["labels"]).set_index("original")


def test_scperturb_labels_use_nperts_to_tell_combinations_from_guides():
    source = screen(
        perturbation=["control", "GATA1", "GATA1_CEBPA", "GATA1_2", "HLA-A", "SPI1_CEBPA"],
        nperts=[0, 1, 2, 1, 1, 2],
    )
    before = source.obs.copy()
    mapped = read_screen(source)
    assert mapped.uns["read_screen"]["format"] == "scperturb"
    assert list(mapped.obs["perturbation"]) == [
        "control",
        "GATA1",
        "CEBPA+GATA1",
        "GATA1",
        "HLA-A",  # a gene whose name holds a separator stays one gene
        "CEBPA+SPI1",
    ]
    assert list(mapped.obs["perturbation_original"]) == list(before["perturbation"])
    assert report(mapped).loc["GATA1_2", "read_as"] == "guide"
    assert report(mapped).loc["GATA1_CEBPA", "read_as"] == "combination"
    pd.testing.assert_frame_equal(source.obs, before)  # the user's AnnData is unchanged
    assert np.shares_memory(mapped.X, source.X)  # and its matrix not copied
    assert register(mapped).conditions == (
        "control",
        "GATA1",
        "CEBPA+GATA1",
        "HLA-A",
        "CEBPA+SPI1",
    )


def test_gears_conditions_drop_the_ctrl_padding():
    mapped = read_screen(screen(condition=["ctrl", "GATA1+ctrl", "ctrl+CEBPA", "GATA1+CEBPA"]))
    assert mapped.uns["read_screen"]["format"] == "gears"
    assert list(mapped.obs["perturbation"]) == ["control", "GATA1", "CEBPA", "CEBPA+GATA1"]


def test_control_aliases_and_guides_map_and_unknown_labels_are_reported(tmp_path):
    labels = ["non-targeting", "NT", "Non-Targeting", "GATA1_sg1", "CEBPA-2", "FOO", "GATA1+SPI1"]
    mapped = read_screen(screen(perturbation=labels))
    assert mapped.uns["read_screen"]["format"] == "causalcell"
    assert list(mapped.obs["perturbation"]) == [
        "control",
        "control",
        "control",
        "GATA1",
        "CEBPA",
        "FOO",
        "GATA1+SPI1",
    ]
    assert list(mapped.uns["read_screen"]["unmapped"]) == ["FOO"]
    with pytest.raises(ValueError, match="'FOO'"):  # register names what was not mapped
        register(mapped)
    path = tmp_path / "mapped.h5ad"
    mapped.write_h5ad(path)  # the report is written with the data
    assert list(anndata.read_h5ad(path).uns["read_screen"]["unmapped"]) == ["FOO"]
    again = read_screen(path, "causalcell")  # a path reads the same way
    assert list(again.obs["perturbation"]) == list(mapped.obs["perturbation"])


def test_bad_formats_columns_and_paths_are_named(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        read_screen(screen(perturbation=["control"]), "seurat")
    with pytest.raises(ValueError, match="no column 'condition'"):
        read_screen(screen(perturbation=["control"]), "gears")
    with pytest.raises(ValueError, match="found no perturbation labels"):
        read_screen(screen(guide=["control"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_screen(tmp_path / "none.h5ad")


def test_guides_kept_as_perturbations_map_to_their_genes_through_a_column():
    adata = screen(perturbation=["NT", "GATA1_1", "GATA1_2", "CEBPA-sg1", "CEBPA"])
    genes_only = read_screen(adata)
    assert list(genes_only.obs["perturbation"]) == ["control", "GATA1", "GATA1", "CEBPA", "CEBPA"]
    kept = read_screen(adata, guides="perturbations")
    assert list(kept.obs["perturbation"]) == ["control", "GATA1_1", "GATA1_2", "CEBPA-sg1", "CEBPA"]
    assert list(kept.obs["perturbation_target"]) == ["control", "GATA1", "GATA1", "CEBPA", "CEBPA"]
    registry = register(kept, perturbation_targets="perturbation_target")
    assert registry.perturbation_targets == {
        "GATA1_1": ("GATA1",),
        "GATA1_2": ("GATA1",),
        "CEBPA-sg1": ("CEBPA",),
    }
    with pytest.raises(ValueError, match="guides must be one of"):
        read_screen(adata, guides="guides")
