"""BrightestClass(d): label-free choice of the object class of an unsupervised segmentation."""

import numpy as np
import pytest
import torch

from transforms import BrightestClass, BrightestClassd


def _scene():
    image = torch.zeros(2, 6, 6)
    image[0, :, :] = 1.0          # channel 0: tissue 1, object 5, dark corner 0
    image[0, 1:3, 1:3] = 5.0
    image[0, 4:, 4:] = 0.0
    image[1] = 7.0 - image[0]     # channel 1 has the opposite contrast
    classes = torch.zeros(6, 6, dtype=torch.long)  # class 0 tissue
    classes[1:3, 1:3] = 2                          # class 2 the bright object
    classes[4:, 4:] = 1                            # class 1 dark
    logits = torch.nn.functional.one_hot(classes, 3).permute(2, 0, 1).float() * 10.0
    return image, logits, classes


def test_picks_brightest_class_and_returns_one_hot():
    image, logits, classes = _scene()
    best, means, _ = BrightestClass(channel=0, num_classes=3).brightest(logits, image)
    assert best == 2
    assert means.tolist() == pytest.approx([1.0, 0.0, 5.0], abs=5e-3)  # softmax of logits 10: ~4.5e-5 leak
    out = BrightestClass(channel=0, num_classes=3)(logits, image)
    assert out.shape == (2, 6, 6)
    assert torch.equal(out[1], (classes == 2).float())
    assert torch.equal(out[0] + out[1], torch.ones(6, 6))
    # the other channel's contrast makes the dark class the brightest
    assert torch.equal(BrightestClass(channel=1, num_classes=3)(logits, image)[1], (classes == 1).float())


def test_extra_channels_are_ignored_and_mask_restricts_the_means():
    image, logits, classes = _scene()
    with_bias = torch.cat([logits, torch.full((1, 6, 6), 100.0)])  # a bias channel must not count as a class
    out = BrightestClass(channel=0, num_classes=3)(with_bias, image)
    assert torch.equal(out[1], (classes == 2).float())
    mask = torch.ones(6, 6)
    mask[1:3, 1:3] = 0  # hide the bright object: tissue is now the brightest class present
    out = BrightestClass(channel=0, num_classes=3)(logits, image, mask)
    assert torch.equal(out[1], (classes == 0).float())


def test_dict_version_numpy_and_errors():
    image, logits, classes = _scene()
    d = BrightestClassd(keys="pred", image_key="image", channel=0, num_classes=3)(
        {"pred": logits.numpy(), "image": image.numpy()})
    assert isinstance(d["pred"], np.ndarray)
    assert np.array_equal(d["pred"][1], (classes == 2).numpy().astype(np.float32))
    with pytest.raises(ValueError, match="spatial shape"):
        BrightestClass(num_classes=3)(logits, image[:, :5])
    with pytest.raises(ValueError, match="out of range"):
        BrightestClass(channel=4, num_classes=3)(logits, image)
    with pytest.raises(KeyError, match="image_key"):
        BrightestClassd(keys="pred", image_key="img")({"pred": logits})
