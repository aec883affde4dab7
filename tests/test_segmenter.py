"""The colour segmenter recovers the renderer's masks, and blurry edges do not count as objects."""
import numpy as np
from PIL import Image, ImageFilter

from train import world
from train.segment import iou, segment, sky_kind


def test_segmenter_recovers_ground_truth_masks():
    per_class: dict[str, list[float]] = {}
    for s in range(60):
        sc = world.render(s, "heldout" if s % 2 else "train")
        seg = segment(sc.image)
        assert set(seg) <= set(sc.masks), (s, set(seg) - set(sc.masks))
        for name, mask in sc.masks.items():
            per_class.setdefault(name, []).append(iou(mask, seg.get(name, np.zeros_like(mask))))
        assert sky_kind(sc.image) == sc.attributes["sky"]
    for name, values in per_class.items():
        assert np.mean(values) >= 0.95, (name, np.mean(values))
    assert np.mean([v for vs in per_class.values() for v in vs]) >= 0.98


def test_blurred_edges_are_not_a_grey_wolf():
    sky = np.zeros((128, 128, 3), np.uint8) + np.array(world.PALETTE["night sky"][0][0], np.uint8)
    yy, xx = np.mgrid[:128, :128]
    for cx, cy in ((40, 40), (90, 60), (50, 95)):
        sky[(xx - cx) ** 2 + (yy - cy) ** 2 <= 16 ** 2] = world.PALETTE["moon"][0][0]
    blurred = np.asarray(Image.fromarray(sky).filter(ImageFilter.GaussianBlur(3)))
    seg = segment(blurred)
    assert "moon" in seg and "sky" in seg
    assert not set(seg) - {"moon", "sky"}, set(seg)


def test_small_specks_are_not_objects():
    img = np.zeros((128, 128, 3), np.uint8) + np.array(world.PALETTE["day sky"][0][0], np.uint8)
    img[10:14, 10:14] = world.PALETTE["wolf"][0][0]  # 16 px: well below one latent cell
    assert "wolf" not in segment(img)


def test_found_inside_needs_the_object_within_the_mask():
    from train.segment import MIN_AREA, found_inside

    scene = next(sc for sc in map(world.render, range(200)) if "misty forest" in sc.masks)
    forest = scene.masks["misty forest"]
    assert found_inside(scene.image, "misty forest", forest)
    assert not found_inside(scene.image, "misty forest", ~forest)
    few = np.zeros_like(forest)
    few[np.nonzero(forest)[0][: MIN_AREA - 1], np.nonzero(forest)[1][: MIN_AREA - 1]] = True
    assert not found_inside(scene.image, "misty forest", few)
