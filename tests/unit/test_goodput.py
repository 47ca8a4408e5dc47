from kubetrain_operator import goodput


def test_new_steps_are_productive_redone_ones_are_not() -> None:
    assert goodput.productive_seconds(0, 100, 0, 50.0) == 50.0
    assert goodput.productive_seconds(40, 60, 100, 10.0) == 0.0  # all redone
    assert goodput.productive_seconds(90, 110, 100, 10.0) == 5.0  # half redone
    assert goodput.productive_seconds(80, 70, 100, 10.0) == 0.0  # went back: a restart


def test_percent_is_bounded_and_undefined_without_wall_time() -> None:
    assert goodput.percent(50.0, 200.0) == 25.0
    assert goodput.percent(300.0, 200.0) == 100.0
    assert goodput.percent(0.0, 0.0) is None
