"""CLAM's ``pt_files``: a torch-saved ``(N, D)`` tensor reads safely, anything else is a typed
error naming the file and CLAM's matching ``h5_files`` entry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from histoguard.errors import OutputError
from histoguard.features import read_feature_file


def test_a_clam_pt_tensor_reads_as_features_without_coords(tmp_path: Path) -> None:
    tensor = torch.randn(5, 7, dtype=torch.float64)
    torch.save(tensor, tmp_path / "s.pt")
    data = read_feature_file(tmp_path / "s.pt")
    assert data.features.dtype == np.float32 and data.features.shape == (5, 7)
    np.testing.assert_allclose(data.features, tensor.numpy(), rtol=1e-6)
    assert data.coords is None and data.source_format == "clam-pt"


@pytest.mark.parametrize(
    ("content", "found"),
    [(torch.zeros(3), "shape (3,)"), ({"features": torch.zeros(2, 2)}, "a dict")],
)
def test_a_pt_file_without_one_matrix_names_the_h5(
    tmp_path: Path, content: object, found: str
) -> None:
    (tmp_path / "pt_files").mkdir()
    (tmp_path / "h5_files").mkdir()
    (tmp_path / "h5_files" / "s.h5").write_bytes(b"")
    torch.save(content, tmp_path / "pt_files" / "s.pt")
    with pytest.raises(OutputError) as info:
        read_feature_file(tmp_path / "pt_files" / "s.pt")
    message = str(info.value)
    assert found in message and str(tmp_path / "h5_files" / "s.h5") in message


def test_a_pickled_object_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Sneaky:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.mkdir, (str(marker),))

    torch.save(Sneaky(), tmp_path / "s.pt")
    with pytest.raises(OutputError, match=r"s\.pt: not a torch-saved feature tensor"):
        read_feature_file(tmp_path / "s.pt")
    assert not marker.exists()


def test_a_missing_or_broken_pt_file(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="not found"):
        read_feature_file(tmp_path / "missing.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a zip")
    with pytest.raises(OutputError, match="broken.pt"):
        read_feature_file(tmp_path / "broken.pt")
