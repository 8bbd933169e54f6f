"""The loss curve drawn without matplotlib (stylemamba.plots)."""
from stylemamba.plots import loss_curve_image


def test_a_narrow_curve_is_widened_not_an_error():
    """Before: width 10 (made 160) left no room between the axis labels and the legend: a Pillow ValueError."""
    for width in (10, 160, 200):
        assert loss_curve_image([{"total": 2.0, "dir": 0.5}, {"total": 1.0, "dir": 0.4}], width=width).shape == \
            (3, 360, 240)
