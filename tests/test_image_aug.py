"""The seeds' INTER_AREA 48 -> 47 top-left shrink (spec 2.4 step 4) against hand computations."""

import numpy as np
import pytest
import torch

from sketchlab.data.image_aug import area_resize, area_resize_matrix, random_scale_png, shrink_top_left


def test_area_weights_4_to_3_by_hand():
    # s = 4/3. Output 0 covers [0, 4/3): pixel 0 fully, 1/3 of pixel 1 -> (1, 1/3)/(4/3) = (.75, .25)
    # output 1 covers [4/3, 8/3): 2/3 of pixels 1 and 2 -> (.5, .5)
    # output 2 covers [8/3, 4): 1/3 of pixel 2, pixel 3 fully -> (.25, .75)
    expected = [[0.75, 0.25, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0.25, 0.75]]
    np.testing.assert_allclose(area_resize_matrix(4, 3), expected, rtol=1e-6)


def test_area_weights_48_to_47():
    w = area_resize_matrix(48, 47).astype(np.float64)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    # output k covers [48k/47, 48(k+1)/47): output 0 = (1, 1/47)/(48/47) = (47/48, 1/48);
    # output 46 covers [46 + 46/47, 48) = (1/47, 1)/(48/47) = (1/48, 47/48)
    np.testing.assert_allclose(w[0, :2], [47 / 48, 1 / 48], rtol=1e-6)
    np.testing.assert_allclose(w[46, 46:], [1 / 48, 47 / 48], rtol=1e-6)
    assert (np.count_nonzero(w, axis=1) == 2).all()  # every output straddles exactly 2 pixels
    np.testing.assert_array_equal(area_resize_matrix(6, 3), [[0.5, 0.5, 0, 0, 0, 0], [0, 0, 0.5, 0.5, 0, 0], [0, 0, 0, 0, 0.5, 0.5]])
    with pytest.raises(ValueError):
        area_resize_matrix(3, 4)


def test_area_resize_2d_and_top_left_paste_by_hand():
    # x[i, j] = 4i + j is linear, so out[r, c] = 4 a_r + a_c with a = A (0, 1, 2, 3)
    # = (.25, 1.5, 2.75): out[0,0] = 1.25, out[1,1] = 7.5, out[2,2] = 13.75, out[0,2] = 3.75
    x = torch.arange(16.0).view(1, 4, 4)
    out = area_resize(x, 3, 3)[0]
    assert torch.allclose(out, torch.tensor([[1.25, 2.5, 3.75], [6.25, 7.5, 8.75], [11.25, 12.5, 13.75]]))
    # rescale with ratio .8: h2 = int(3.2) = 3, offset int(.5) = 0 -> top-left, last row/col white
    pasted = shrink_top_left(x, 3, fill=1.0)[0]
    assert torch.equal(pasted[:3, :3], out)
    assert (pasted[3, :] == 1).all() and (pasted[:, 3] == 1).all()
    # an even margin centres: 6 -> 4 pastes at int(2/2) = 1
    y = shrink_top_left(torch.zeros(1, 6, 6), 4, fill=1.0)[0]
    assert (y[1:5, 1:5] == 0).all() and y.sum() == 36 - 16


def test_random_scale_png_is_always_47_top_left():
    rng = np.random.default_rng(0)
    img = torch.rand(5, 48, 48) * 2 - 1
    out = random_scale_png(img, rng, 0.98)
    assert (out[:, 47, :] == 1).all() and (out[:, :, 47] == 1).all()
    assert torch.allclose(out[:, :47, :47], area_resize(img, 47, 47))
    assert random_scale_png(img, rng, 1.0) is img


def test_matches_opencv_inter_area():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    for n_in, n_out in [(48, 47), (4, 3), (10, 7), (48, 24)]:
        img = rng.uniform(-1, 1, size=(n_in, n_in))  # float64 like the seeds' images
        ref = cv2.resize(img, (n_out, n_out), interpolation=cv2.INTER_AREA)
        ours = area_resize(torch.from_numpy(img)[None], n_out, n_out)[0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_batched_device_shrink_equals_per_size_shrink():
    from sketchlab.data.image_aug import png_scale_sizes, shrink_top_left_batched

    rng = np.random.default_rng(3)
    img = torch.rand(6, 48, 48) * 2 - 1
    sizes = np.array([47, 48, 40, 47, 24, 1])
    ref = shrink_top_left(img, sizes, fill=1.0)
    out = shrink_top_left_batched(img, torch.from_numpy(sizes), fill=1.0)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.equal(out[1], img[1]) or torch.allclose(out[1], img[1], atol=1e-6)  # side 48: identity
    drawn = png_scale_sizes(rng, 1000, 48, 0.98)
    assert (drawn == 47).all()                      # the seeds' default: always 47
    assert (png_scale_sizes(rng, 5, 48, 1.0) == 48).all()
