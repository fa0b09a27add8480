"""The decoder's image grids: a row per view of target | render | error panels, under a row naming the panels."""

from __future__ import annotations

import pytest
import torch

from avp.lit.image_logging import LABEL_HEIGHT, PANEL_LABELS, visual_grid


def test_each_panel_column_is_named_and_the_panels_are_untouched() -> None:
    g = torch.Generator().manual_seed(0)
    panels = torch.rand(2, 3, 3, 20, 30, generator=g)  # 2 views, 3 panels of 30 x 20 px
    bare = visual_grid(panels, labels=None)
    grid = visual_grid(panels)
    assert grid.shape == (3, LABEL_HEIGHT + bare.shape[1], bare.shape[2])
    assert torch.equal(grid[:, LABEL_HEIGHT:], bare)  # the labels only add a row
    header = grid[:, :LABEL_HEIGHT]
    for column in range(3):  # ink above every panel (2 px padding, 30 px panels)
        x0 = 2 + column * 32
        assert header[:, :, x0:x0 + 30].min() < 0.5, PANEL_LABELS[column]
    assert header[:, :, 2 + 2 * 32 + 30:].min() == 1.0  # nothing right of the last column
    with pytest.raises(ValueError, match="2 labels for 3 panels"):
        visual_grid(panels, labels=("a", "b"))
