"""The one polygon fill, shared by COCO polygons and Label Studio polygons and rectangles."""

from __future__ import annotations

import numpy as np

from training.data.polygons import fill_polygon


def test_a_pixel_is_inside_when_its_centre_is():
    square = fill_polygon(np.array([[2.0, 1.0], [6.0, 1.0], [6.0, 4.0], [2.0, 4.0]]), 8, 8)
    expected = np.zeros((8, 8), bool)
    expected[1:4, 2:6] = True
    np.testing.assert_array_equal(square, expected)
    # Edges through pixel centres: the left/top centre counts, the right/bottom one does not.
    half = fill_polygon(np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 2.5], [0.5, 2.5]]), 4, 4)
    assert half[0:2, 0:3].all() and half.sum() == 6


def test_vertices_on_row_centres_count_once_and_shapes_are_clipped():
    diamond = fill_polygon(np.array([[4.0, 0.5], [7.5, 4.0], [4.0, 7.5], [0.5, 4.0]]), 8, 8)
    assert diamond[0].sum() == 0 and diamond[3].sum() == diamond[4].sum() == 6 and diamond[7].sum() == 0
    outside = fill_polygon(np.array([[-5.0, -5.0], [20.0, -5.0], [20.0, 20.0], [-5.0, 20.0]]), 3, 4)
    assert outside.all()


def test_self_intersecting_outlines_follow_the_even_odd_rule():
    # A square traced twice around a hole: the ring is filled, the hole is not.
    outer = [[0, 0], [6, 0], [6, 6], [0, 6], [0, 0]]
    inner = [[2, 2], [2, 4], [4, 4], [4, 2], [2, 2]]
    ring = fill_polygon(np.array(outer + inner, dtype=np.float64), 6, 6)
    assert ring.sum() == 36 - 4 and not ring[2:4, 2:4].any()
