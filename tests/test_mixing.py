"""The one weighting rule of prompt and style mixes (stylemamba.mixing)."""
import pytest

from stylemamba.mixing import normalise_weights


def test_huge_weights_keep_their_shares():
    """1e308 twice summed to inf: both weights became 0, and stylize refused the mix after the VAE loaded, naming
    weights [0.0, 0.0] that the user never typed."""
    assert normalise_weights([1e308, 1e308], 2, "style") == pytest.approx((0.5, 0.5))
    assert normalise_weights([1e308, 0.0], 2, "style") == (1.0, 0.0)
    assert normalise_weights([3.0, 1.0], 2, "prompt") == pytest.approx((0.75, 0.25))
    assert sum(normalise_weights([5e-324, 5e-324, 5e-324], 3, "style")) == pytest.approx(1.0)
