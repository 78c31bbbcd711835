"""A fitted LCD saved to a folder and loaded back (``LCD.save``, ``LCD.load``)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from causalcell.datasets import simulate_screen
from causalcell.models.lcd import LCD


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A knockout screen of 10 genes fitted in a reduced space (one gene added to the three
    targets, two programs) with a prior mask, and its folder."""
    adata = simulate_screen(
        num_genes=10,
        num_cells=800,
        perturbed_genes=3,
        double_perturbations=2,
        intervention="knockout",
        key=0,
    )
    mask = np.ones((10, 10), np.float32)
    mask[0, 1] = 0.0  # G1 does not regulate G0
    model = LCD.fit(
        adata,
        intervention="knockout",
        num_steps=50,
        batch_size=128,
        progress_bar=False,
        modelled_genes=1,
        programs=2,
        prior_mask=mask,
    )
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save(folder)
    return model, folder


def test_a_loaded_model_predicts_and_reads_effects_bit_for_bit(saved):
    model, folder = saved
    loaded = LCD.load(folder)
    assert not loaded.space.is_full and loaded.space.programs == 2
    assert loaded.modelled_genes == model.modelled_genes and loaded.genes == model.genes
    assert loaded.registry == model.registry and loaded.settings == model.settings
    assert loaded.intervention == "knockout" and loaded.drift_kind == "linear"
    np.testing.assert_array_equal(loaded.prior_mask, model.prior_mask)
    np.testing.assert_array_equal(loaded.library_sizes, model.library_sizes)
    for ours, theirs in zip(
        jax.tree_util.tree_leaves(model.posterior.params),
        jax.tree_util.tree_leaves(loaded.posterior.params),
        strict=True,
    ):
        np.testing.assert_array_equal(ours, theirs)
    requests = [*sorted(model.trained_targets)[:2], "control"]
    before = model.predict(requests, num_cells=20, key=3)
    after = loaded.predict(requests, num_cells=20, key=3)
    assert (before.X != after.X).nnz == 0
    np.testing.assert_array_equal(before.obsm["latent"], after.obsm["latent"])
    ours, theirs = model.effects(num_samples=20, key=1), loaded.effects(num_samples=20, key=1)
    for name in ("mean", "lower", "upper", "probability_positive", "draws"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))


def test_saving_again_replaces_the_model_and_refuses_other_folders(saved, tmp_path):
    model, _ = saved
    folder = tmp_path / "again"
    model.save(folder)
    model.save(folder)  # a saved LCD is replaced
    assert sorted(path.name for path in folder.iterdir()) == [
        "lcd.json",
        "posterior.npz",
        "screen.npz",
    ]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="other files in it"):
        model.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        model.save(tmp_path / "a_file")


def _copy(folder, destination):
    destination.mkdir()
    for path in folder.iterdir():
        (destination / path.name).write_bytes(path.read_bytes())
    return destination


def test_missing_partial_corrupted_and_newer_folders_are_refused_by_name(saved, tmp_path):
    _, folder = saved
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LCD.load(tmp_path / "nowhere")
    partial = _copy(folder, tmp_path / "partial")
    (partial / "lcd.json").unlink()  # what a save that stopped midway leaves
    with pytest.raises(ValueError, match="its save did not finish"):
        LCD.load(partial)
    missing = _copy(folder, tmp_path / "missing")
    (missing / "screen.npz").unlink()
    with pytest.raises(ValueError, match=r"screen\.npz is missing"):
        LCD.load(missing)
    corrupted = _copy(folder, tmp_path / "corrupted")
    data = (corrupted / "posterior.npz").read_bytes()
    (corrupted / "posterior.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"posterior\.npz is not the file LCD\.save wrote"):
        LCD.load(corrupted)
    newer = _copy(folder, tmp_path / "newer")
    header = json.loads((newer / "lcd.json").read_text())
    header["format_version"] = 99
    (newer / "lcd.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match=r"format_version 99.*Upgrade causalcell"):
        LCD.load(newer)
    (newer / "lcd.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"lcd\.json is corrupted"):
        LCD.load(newer)
