"""The offline default: EfficientNet-Lite with real ImageNet weights, read without torch."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from pipeline import classify
from pipeline.models.efficientnet_lite import weights_file
from pipeline.models.torch_weights import UnsafePickleError, read_legacy_state_dict, restricted_loads


def test_lite0_labels_real_photos(photos):
    results = {name: r for name, r in zip(photos, classify([str(p) for p in photos.values()]))}
    assert results["chelsea"].ids[0] in {281, 282, 285}
    assert results["chelsea"].label in {"tabby", "tiger cat", "Egyptian cat"}
    assert results["chelsea"].score > 0.5
    assert results["coffee"].ids[0] == 967 and results["coffee"].label == "espresso"
    assert {657, 744, 812} & set(results["rocket"].ids)
    for r in results.values():
        assert len(r.ids) == 5 and r.scores == sorted(r.scores, reverse=True)


@pytest.mark.parametrize("model", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_lite_variants_label_real_photos(photos, model):
    cat, coffee = classify([str(photos["chelsea"]), str(photos["coffee"])], model=model, top_k=3)
    assert cat.ids[0] in {281, 282, 285}
    assert coffee.label == "espresso"


def test_state_dict_has_every_tensor():
    state = read_legacy_state_dict(weights_file("lite0"))
    tensors = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in tensors.values())
    assert (state["_bn0.running_var"] >= 0).all()


def test_non_contiguous_tensors_honour_strides():
    # The stem is stored with stride (1, 32, 288, 96); a plain reshape would scramble it.
    from pipeline.models.torch_weights import _materialise, _TensorRef

    storage = np.arange(8, dtype=np.float32)
    ref = _TensorRef("0", offset=2, size=(2, 3), stride=(1, 2))
    np.testing.assert_array_equal(_materialise(ref, storage), [[2, 4, 6], [3, 5, 7]])


def test_converted_weights_are_cached(private_cache):
    from pipeline.models.efficientnet_lite import EfficientNetLite

    EfficientNetLite("lite0")
    cached = os.listdir(os.path.join(private_cache, "weights"))
    assert any(name.startswith("efficientnet_lite0") and name.endswith(".weights.h5") for name in cached)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/pwned_by_pickle",))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    payload = pickle.dumps({"weight": _Exploit()}, protocol=2)
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        restricted_loads(payload)
    assert not os.path.exists("/tmp/pwned_by_pickle")
    # The same refusal holds inside a file that looks like a legacy checkpoint.
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({}, f, protocol=2)
        f.write(payload)
    with pytest.raises(UnsafePickleError):
        read_legacy_state_dict(str(bad))
